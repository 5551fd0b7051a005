"""Multi-head self-attention from the formula: softmax(Q Kᵀ / √d_k) · V.

Written with explicit matmuls and softmax (no `F.scaled_dot_product_attention`) so every step of
the formula shows. Masks are boolean with True meaning "may attend".
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gencli.quantize import Int8Projection


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the last two dimensions: [..., q, d_k] x [..., k, d_k] x [..., k, d_v].

    `scale=None` uses 1/√d_k; a float is used as given (`scale=1.0`: unscaled scores).
    Returns (output [..., q, d_v], weights [..., q, k]).
    """
    weights = torch.softmax(apply_mask(attention_scores(query, key, scale), mask), dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ value, weights


def score_scale(scale: float | None, d_k: int) -> float:
    """The factor the scores are multiplied by: `scale` as given, or 1/√d_k for None."""
    return 1.0 / math.sqrt(d_k) if scale is None else scale


def attention_scores(query: torch.Tensor, key: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Q Kᵀ times the scale, [..., q, k]. `scale=None` uses 1/√d_k.

    Scale first, then softmax: softmax of unscaled scores is a different (sharper) distribution."""
    return (query @ key.transpose(-2, -1)) * score_scale(scale, query.size(-1))


def apply_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scores where the mask forbids attending become the dtype's lowest value rather than -inf: a
    fully masked row (a padding query) then gets uniform weights instead of NaNs, as in Hugging
    Face's masks."""
    if mask is None:
        return scores
    return scores.masked_fill(~mask, torch.finfo(scores.dtype).min)


def causal_mask(query_length: int, key_length: int, device: torch.device | None = None) -> torch.Tensor:
    """[query_length, key_length]: the queries are the last `query_length` of `key_length` positions,
    and each may attend to itself and every earlier position."""
    ones = torch.ones(query_length, key_length, dtype=torch.bool, device=device)
    return ones.tril(diagonal=key_length - query_length)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] of 1 (token) / 0 (padding) -> [batch, 1, 1, seq]: no query attends to padding."""
    return attention_mask.bool()[:, None, None, :]


class KVCache:
    """A preallocated key/value cache for one attention layer.

    Like transformers' `StaticLayer`, `keys` and `values` are the whole buffers,
    [batch, heads, max_length, head_dim], of which the first `length` positions are filled.
    Appending writes into them in place; nothing is reallocated or concatenated.
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        max_length: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        self.keys = torch.zeros(batch, heads, max_length, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.length = 0

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions; return the keys and values of all positions so far."""
        end = self.length + keys.size(2)
        if end > self.keys.size(2):
            raise ValueError(f"KV cache full: {end} positions needed, {self.keys.size(2)} allocated")
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class MultiHeadSelfAttention(nn.Module):
    def __init__(
        self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True, scale: float | None = None
    ):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.scale = scale  # None: 1/√head_dim
        self.dropout = dropout
        self.query = nn.Linear(n_embd, n_embd, bias=bias)
        self.key = nn.Linear(n_embd, n_embd, bias=bias)
        self.value = nn.Linear(n_embd, n_embd, bias=bias)
        self.output = nn.Linear(n_embd, n_embd, bias=bias)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, seq, n_embd] -> [batch, heads, seq, head_dim]"""
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.n_head, self.head_dim).transpose(1, 2)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """[batch, heads, seq, head_dim] -> [batch, seq, n_embd]"""
        batch, heads, seq, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, seq, heads * head_dim)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        causal: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [batch, seq, n_embd], the new positions only when a cache holds the earlier ones.

        attention_mask: [batch, keys] of 1/0 over all positions, cached ones included.
        Returns (output [batch, seq, n_embd], weights [batch, heads, seq, keys]).
        """
        query, key, value = self.project(x)
        if cache is not None:
            key, value = cache.append(key, value)
        mask = causal_mask(query.size(2), key.size(2), x.device) if causal else None
        if attention_mask is not None:
            pad = padding_mask(attention_mask)
            mask = pad if mask is None else mask & pad
        attended, weights = self.attend(query, key, value, mask)
        return self.output(self.merge_heads(attended)), weights

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values, each [batch, heads, seq, head_dim]."""
        return self.split_heads(self.query(x)), self.split_heads(self.key(x)), self.split_heads(self.value(x))

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dropout_p = self.dropout if self.training else 0.0
        return scaled_dot_product_attention(query, key, value, mask, self.scale, dropout_p)

    @classmethod
    def from_hf(cls, hf_attention: nn.Module) -> MultiHeadSelfAttention:
        """Take the weights of a Hugging Face `GPT2Attention`, as views: nothing is copied.

        HF's `Conv1D` computes x @ W + b with W stored [in, out], the transpose of `nn.Linear`'s
        [out, in]; `c_attn` packs the Q, K and V projections side by side along `out`.
        """
        n_embd = hf_attention.embed_dim
        with torch.device("meta"):  # every parameter is replaced below
            attention = cls(
                n_embd,
                hf_attention.num_heads,
                dropout=hf_attention.attn_dropout.p,
                scale=hf_attention.scaling,
            )
        if isinstance(hf_attention.c_attn, Int8Projection):
            # Int8 rows split as they are: the same int8 values and scales, no float detour.
            fused = hf_attention.c_attn
            attention.query, attention.key, attention.value = (
                fused.rows(start, start + n_embd) for start in (0, n_embd, 2 * n_embd)
            )
            attention.output = hf_attention.c_proj
            return attention.eval()
        fused_weight, fused_bias = hf_attention.c_attn.weight.detach(), hf_attention.c_attn.bias.detach()
        for index, linear in enumerate((attention.query, attention.key, attention.value)):
            columns = slice(index * n_embd, (index + 1) * n_embd)
            _share(linear, fused_weight[:, columns].t(), fused_bias[columns])  # [out, in], [out]
        _share(attention.output, hf_attention.c_proj.weight.detach().t(), hf_attention.c_proj.bias.detach())
        return attention.eval()


def _share(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    linear.weight = nn.Parameter(weight, requires_grad=False)
    linear.bias = nn.Parameter(bias, requires_grad=False)
