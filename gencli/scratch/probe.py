"""Look inside a Hugging Face GPT-2 with the from-scratch attention: inputs and weights per layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gencli.errors import GencliError, check_index
from gencli.loading import LoadedModel
from gencli.padding import position_ids
from gencli.scratch.attention import MultiHeadSelfAttention


def attention_inputs(
    loaded: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """The normalised hidden states each layer's attention receives, from a real HF forward pass."""
    positions = None if attention_mask is None else position_ids(attention_mask)
    output = loaded.model(
        input_ids, attention_mask=attention_mask, position_ids=positions, output_hidden_states=True
    )
    blocks = loaded.model.transformer.h
    return [block.ln_1(hidden) for block, hidden in zip(blocks, output.hidden_states, strict=False)]


def prompt_ids(loaded: LoadedModel, prompt: str) -> list[int]:
    """The prompt's token ids, refused when they do not fit the model's context (cutting them
    would label the wrong tokens)."""
    ids = loaded.tokenizer.encode(prompt, add_special_tokens=False)
    if not ids:
        raise GencliError("the prompt has no tokens; give some text")
    if len(ids) > loaded.context_length:
        raise GencliError(
            f"the prompt is {len(ids)} tokens, more than the model's context of {loaded.context_length}; "
            "shorten it"
        )
    return ids


@dataclass
class AttentionMap:
    tokens: list[str]  # one label per position
    layer: int
    head: int
    weights: torch.Tensor  # [queries, keys]; row i sums to 1 over keys 0..i


def attention_map(loaded: LoadedModel, prompt: str, layer: int, head: int) -> AttentionMap:
    config = loaded.model.config
    layer = check_index("layer", layer, config.n_layer)
    head = check_index("head", head, config.n_head)
    ids = prompt_ids(loaded, prompt)
    input_ids = torch.tensor([ids], device=loaded.device)
    with torch.inference_mode():
        x = attention_inputs(loaded, input_ids)[layer]
        attention = MultiHeadSelfAttention.from_hf(loaded.model.transformer.h[layer].attn)
        _, weights = attention(x)
    tokens = [loaded.tokenizer.decode([token]) for token in ids]
    return AttentionMap(tokens, layer, head, weights[0, head].float().cpu())
