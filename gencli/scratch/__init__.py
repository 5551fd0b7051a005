"""Attention and GPT-2 written from the formulas, checked number for number against Hugging Face."""

from gencli.scratch.attention import (
    KVCache,
    MultiHeadSelfAttention,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)
from gencli.scratch.model import ScratchCache, ScratchGPT2, gelu_tanh

__all__ = [
    "KVCache",
    "MultiHeadSelfAttention",
    "ScratchCache",
    "ScratchGPT2",
    "causal_mask",
    "gelu_tanh",
    "padding_mask",
    "scaled_dot_product_attention",
]
