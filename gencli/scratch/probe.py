"""Look inside a Hugging Face GPT-2 with the from-scratch attention: inputs and weights per layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


def prompt_ids(loaded: LoadedModel, prompt: str | list[int]) -> list[int]:
    """The prompt's token ids (text is tokenized, ids are checked), refused when they do not fit the
    model's context (cutting them would label the wrong tokens)."""
    if isinstance(prompt, str):
        ids = loaded.tokenizer.encode(prompt, add_special_tokens=False)
    else:
        vocab = loaded.model.config.vocab_size
        if any(not 0 <= token < vocab for token in prompt):
            raise GencliError(f"token ids must be 0 to {vocab - 1} for this model")
        ids = list(prompt)
    if not ids:
        raise GencliError("the prompt has no tokens; give some text")
    if len(ids) > loaded.context_length:
        raise GencliError(
            f"the prompt is {len(ids)} tokens, more than the model's context of {loaded.context_length}; "
            "shorten it"
        )
    return ids


# The "all heads" grid's maps are averaged down to at most this many cells a side: 12 full maps of
# a 1,024-token GPT-2 sequence would be 6 million numbers, a thumbnail grid 49,152.
THUMBNAIL_CELLS = 64


@dataclass
class AttentionMap:
    tokens: list[str]  # one label per position
    layer: int
    head: int
    weights: torch.Tensor  # [queries, keys]; row i sums to 1 over keys 0..i
    ids: list[int] = field(default_factory=list)
    # Every head's map averaged over blocks of positions: [heads, cells, cells], cells <= THUMBNAIL_CELLS.
    thumbnails: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """Row i lists the weights over keys 0..i (the causal mask makes the rest 0), to 6 decimals."""
        rows = [
            [round(value, 6) for value in row[: index + 1]] for index, row in enumerate(self.weights.tolist())
        ]
        record: dict[str, Any] = {
            "ids": self.ids,
            "tokens": self.tokens,
            "layer": self.layer,
            "head": self.head,
            "weights": rows,
        }
        if self.thumbnails is not None:
            record["thumbnails"] = [
                [[round(value, 4) for value in row] for row in head] for head in self.thumbnails.tolist()
            ]
        return record


def attention_map(
    loaded: LoadedModel, prompt: str | list[int], layer: int, head: int, thumbnails: bool = False
) -> AttentionMap:
    """One head's weights over the prompt (text or token ids); with `thumbnails`, every head's map
    averaged down to a small grid too."""
    config = loaded.model.config
    layer = check_index("layer", layer, config.n_layer)
    head = check_index("head", head, config.n_head)
    ids = prompt_ids(loaded, prompt)
    input_ids = torch.tensor([ids], device=loaded.device)
    with torch.inference_mode():
        x = attention_inputs(loaded, input_ids)[layer]
        attention = MultiHeadSelfAttention.from_hf(loaded.model.transformer.h[layer].attn)
        _, weights = attention(x)  # [1, heads, queries, keys]
        small = None
        if thumbnails:
            cells = min(len(ids), THUMBNAIL_CELLS)
            small = torch.nn.functional.adaptive_avg_pool2d(weights[0].float(), cells).cpu()
    tokens = [loaded.tokenizer.decode([token]) for token in ids]
    return AttentionMap(tokens, layer, head, weights[0, head].float().cpu(), ids, small)
