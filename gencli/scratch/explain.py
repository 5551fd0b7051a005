"""One attention head worked step by step, as the tutorials do it by hand: on the model's real
weights (`explain`) or on a 3-token example small enough to check with pencil and paper
(`worked_example`).

Every number comes from the from-scratch model (`gencli.scratch`); the result is then checked
against the Hugging Face layer, as `gencli verify` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gencli.errors import check_index
from gencli.loading import LoadedModel
from gencli.scratch.attention import (
    KVCache,
    attention_scores,
    causal_mask,
    scaled_dot_product_attention,
    score_scale,
)
from gencli.scratch.model import ScratchGPT2
from gencli.scratch.probe import attention_inputs, prompt_ids
from gencli.scratch.verify import ATTENTION_ATOL, Check, additive_mask, compare


@dataclass
class HeadSteps:
    """One head's attention for one query position, every intermediate kept. The keys are the
    prompt's positions 0..T-1; those after the query are masked."""

    x: torch.Tensor  # [n_embd], the query position's input row after the layer norm
    query: torch.Tensor  # [head_dim]
    keys: torch.Tensor  # [T, head_dim]
    values: torch.Tensor  # [T, head_dim]
    raw_scores: torch.Tensor  # [T], q·k_j
    scale: float
    scaled_scores: torch.Tensor  # [T], q·k_j * scale
    allowed: torch.Tensor  # [T] bool, the causal mask's row
    weights: torch.Tensor  # [T], softmax of the masked scores
    head_output: torch.Tensor  # [head_dim], Σ_j weights_j · v_j


@dataclass
class CacheStep:
    """The query position decoded through a KV cache holding the positions before it."""

    cached_shape: tuple[int, ...]  # keys (and values) read from the cache: [1, heads, P, head_dim]
    new_shape: tuple[int, ...]  # computed now: [1, heads, 1, head_dim]
    attended_shape: tuple[int, ...]  # what the query attends over: [1, heads, P + 1, head_dim]
    max_abs_difference: float  # its output against the whole-prompt computation's


@dataclass
class Explanation:
    model: str
    ids: list[int]
    tokens: list[str]
    layer: int
    head: int
    position: int
    n_head: int
    head_dim: int
    steps: HeadSteps
    merged: torch.Tensor  # [n_embd], every head's output at the position, side by side
    attention_output: torch.Tensor  # [n_embd], after the output projection
    cache: CacheStep
    check: Check  # attention_output against the Hugging Face layer's

    def to_dict(self) -> dict:
        steps = {name: _plain(value) for name, value in vars(self.steps).items()}
        return {
            "model": self.model,
            "ids": self.ids,
            "tokens": self.tokens,
            "layer": self.layer,
            "head": self.head,
            "position": self.position,
            "n_head": self.n_head,
            "head_dim": self.head_dim,
            "steps": steps,
            "merged": _plain(self.merged),
            "attention_output": _plain(self.attention_output),
            "cache": vars(self.cache),
            "check": self.check.to_dict(),
        }


def _plain(value: object) -> object:
    return value.tolist() if isinstance(value, torch.Tensor) else value


def _steps(
    x: torch.Tensor,
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    position: int,
    scale: float | None,
) -> HeadSteps:
    count = keys.size(0)
    row = query[position : position + 1]  # [1, head_dim]
    allowed = causal_mask(count, count, x.device)[position : position + 1]  # [1, T]
    resolved_scale = score_scale(scale, keys.size(-1))
    output, weights = scaled_dot_product_attention(row, keys, values, allowed, resolved_scale)
    return HeadSteps(
        x=x[position],
        query=row[0],
        keys=keys,
        values=values,
        raw_scores=attention_scores(row, keys, scale=1.0)[0],
        scale=resolved_scale,
        scaled_scores=attention_scores(row, keys, resolved_scale)[0],
        allowed=allowed[0],
        weights=weights[0],
        head_output=output[0],
    )


def explain(
    loaded: LoadedModel, prompt: str | list[int], layer: int = 0, head: int = 0, position: int = -1
) -> Explanation:
    """Walk one head of one layer through the attention formula for the token at `position` of the
    prompt (text or token ids)."""
    config = loaded.model.config
    layer = check_index("layer", layer, config.n_layer)
    head = check_index("head", head, config.n_head)
    ids = prompt_ids(loaded, prompt)
    position = check_index("position", position, len(ids), owner=f"the prompt ({len(ids)} tokens)")
    input_ids = torch.tensor([ids], device=loaded.device)
    n_head, head_dim = config.n_head, config.n_embd // config.n_head
    with torch.inference_mode():
        scratch = ScratchGPT2.from_hf(loaded.model)
        hidden = scratch.wte(input_ids) + scratch.wpe(torch.arange(len(ids), device=loaded.device)[None])
        for block in scratch.blocks[:layer]:
            hidden = block(hidden)
        block = scratch.blocks[layer]
        x = block.ln_1(hidden)  # [1, T, n_embd]
        attention = block.attention
        query, keys, values = attention.project(x)  # [1, heads, T, head_dim] each
        steps = _steps(x[0], query[0, head], keys[0, head], values[0, head], position, attention.scale)
        mask = causal_mask(len(ids), len(ids), loaded.device)
        attended, _ = attention.attend(query, keys, values, mask)  # [1, heads, T, head_dim]
        merged = attention.merge_heads(attended)  # [1, T, n_embd]
        attention_output = attention.output(merged)[0, position]  # [n_embd]
        cache = _through_cache(attention, x, position, attention_output)
        check = _check_against_hf(loaded, input_ids, layer, position, attention_output)
    tokens = [loaded.tokenizer.decode([token]) for token in ids]
    return Explanation(
        model=loaded.name,
        ids=ids,
        tokens=tokens,
        layer=layer,
        head=head,
        position=position,
        n_head=n_head,
        head_dim=head_dim,
        steps=steps,
        merged=merged[0, position],
        attention_output=attention_output,
        cache=cache,
        check=check,
    )


def _through_cache(
    attention: torch.nn.Module, x: torch.Tensor, position: int, expected: torch.Tensor
) -> CacheStep:
    """Prefill the positions before the query into a KV cache, then decode the query alone, as
    generation does: its keys and values are the only ones computed now."""
    n_head, head_dim = attention.n_head, attention.head_dim
    cache = KVCache(1, n_head, position + 1, head_dim, x.dtype, x.device)
    if position:
        attention(x[:, :position], cache=cache)
    cached = (1, n_head, cache.length, head_dim)
    output, _ = attention(x[:, position : position + 1], cache=cache)  # [1, 1, n_embd]
    return CacheStep(
        cached_shape=cached,
        new_shape=(1, n_head, 1, head_dim),
        attended_shape=(1, n_head, cache.length, head_dim),
        max_abs_difference=(output[0, 0] - expected).abs().max().item(),
    )


def _check_against_hf(
    loaded: LoadedModel, input_ids: torch.Tensor, layer: int, position: int, actual: torch.Tensor
) -> Check:
    """The Hugging Face layer's attention output for the same position, from its own forward pass."""
    x = attention_inputs(loaded, input_ids)[layer]
    count = input_ids.size(1)
    hf_mask = additive_mask(causal_mask(count, count, x.device)[None, None], x.dtype)
    expected = loaded.model.transformer.h[layer].attn(x, attention_mask=hf_mask)[0][0, position]
    return compare("a", layer, expected, actual, ATTENTION_ATOL)


# The 3-token example of the tutorials: x is 3 by 4, W_q, W_k and W_v are 4 by 3, and the scores are not
# scaled (tests/scratch/test_attention.py pins its weights).
WORKED_X = ((1, 0, 1, 0), (0, 2, 0, 2), (1, 1, 1, 1))
WORKED_W_Q = ((1, 0, 1), (1, 0, 0), (0, 0, 1), (0, 1, 1))
WORKED_W_K = ((0, 0, 1), (1, 1, 0), (0, 1, 0), (1, 1, 0))
WORKED_W_V = ((0, 2, 0), (0, 3, 0), (1, 0, 3), (1, 1, 0))


@dataclass
class WorkedExample:
    x: torch.Tensor  # [3, 4]
    w_q: torch.Tensor  # [4, 3]
    w_k: torch.Tensor
    w_v: torch.Tensor
    query: torch.Tensor  # [3, 3] = x W_q
    key: torch.Tensor
    value: torch.Tensor
    scores: torch.Tensor  # [3, 3] = Q Kᵀ, unscaled
    weights: torch.Tensor  # [3, 3], softmax over each row
    output: torch.Tensor  # [3, 3] = weights V
    causal_weights: torch.Tensor  # [3, 3], with the causal mask: no token sees a later one
    causal_output: torch.Tensor

    def to_dict(self) -> dict:
        return {name: value.tolist() for name, value in vars(self).items()}


def worked_example() -> WorkedExample:
    x, w_q, w_k, w_v = (
        torch.tensor(table, dtype=torch.float32) for table in (WORKED_X, WORKED_W_Q, WORKED_W_K, WORKED_W_V)
    )
    query, key, value = x @ w_q, x @ w_k, x @ w_v
    output, weights = scaled_dot_product_attention(query, key, value, scale=1.0)
    causal_output, causal_weights = scaled_dot_product_attention(
        query, key, value, causal_mask(3, 3), scale=1.0
    )
    return WorkedExample(
        x=x,
        w_q=w_q,
        w_k=w_k,
        w_v=w_v,
        query=query,
        key=key,
        value=value,
        scores=attention_scores(query, key, scale=1.0),
        weights=weights,
        output=output,
        causal_weights=causal_weights,
        causal_output=causal_output,
    )
