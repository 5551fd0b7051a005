"""A GPT-2 forward pass for one new token after a KV cache, as few tensor operations as it takes.

A decode step's products stream the weights; everything between them is a few hundred small
operations, and transformers' forward pass spends more on its modules, masks, cache bookkeeping
and dispatch than on the arithmetic (GPT-2 124M float32 on a 2-core EPYC: 7 ms of a 27 ms step).
For the case a decode step is, one token of one sequence with no padding, this runs the same
formula on the same weights directly, layer after layer:

    x = wte[token] + wpe[position]                                   # [1, n_embd]
    per block:  q, k, v = split(c_attn(ln_1(x)))                     # [heads, 1, head_dim] each
                K[:, n], V[:, n] = k, v                               # into the cache
                x = x + c_proj(softmax(q · K[:, :n+1]ᵀ / √head_dim) · V[:, :n+1])
                x = x + mlp.c_proj(gelu(mlp.c_fc(ln_2(x))))
    logits = lm_head(ln_f(x))

with the projections the engine already has (`gencli.gemv.Projection`: the kernel chosen for
each weight). Everything else (a prefill, a padded batch, a proposal's several tokens, a config
with the attention options GPT-2 leaves off) runs through transformers' forward pass.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from gencli.engines.kv_cache import FilledStaticCache

# The activations whose formula F.gelu computes in one operation instead of five.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def runs_one_token_steps(config: object) -> bool:
    """Whether a GPT-2 config uses only what `OneTokenStep` computes."""
    return (
        getattr(config, "model_type", None) == "gpt2"
        and getattr(config, "scale_attn_weights", True)
        and not getattr(config, "scale_attn_by_inverse_layer_idx", False)
        and not getattr(config, "reorder_and_upcast_attn", False)
        and getattr(config, "add_cross_attention", False) is False
    )


class OneTokenStep:
    """Runs one token through a transformers GPT-2 body (`transformer`, whose projections may be
    `Projection`s) and an LM head, reading and extending a `FilledStaticCache`."""

    def __init__(self, transformer: nn.Module, lm_head: nn.Module):
        config = transformer.config
        self.transformer, self.lm_head = transformer, lm_head
        self.heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.width = (config.n_embd,)
        self.scale = 1 / math.sqrt(self.head_dim)
        self.activation = config.activation_function
        self.blocks = list(transformer.h)

    def _activate(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.activation in TANH_GELU:
            return F.gelu(x, approximate="tanh")
        return block.mlp.act(x)

    def __call__(self, cache: FilledStaticCache, token: torch.Tensor, position: int) -> torch.Tensor:
        """token: [1, 1]; `position` its position id, `cache` holding every earlier position.
        Returns the logits after it, [1, 1, vocab]."""
        transformer, heads, head_dim = self.transformer, self.heads, self.head_dim
        filled = int(cache.layers[0].cumulative_length)
        x = transformer.wte.weight[token[0]] + transformer.wpe.weight[position]  # [1, n_embd]
        for block, layer in zip(self.blocks, cache.layers, strict=True):
            ln = block.ln_1
            h = F.layer_norm(x, self.width, ln.weight, ln.bias, ln.eps)
            q, k, v = block.attn.c_attn(h).view(3, heads, 1, head_dim)  # [heads, 1, head_dim] each
            keys, values = layer.keys[0], layer.values[0]  # [heads, max_length, head_dim]
            keys[:, filled : filled + 1].copy_(k)
            values[:, filled : filled + 1].copy_(v)
            layer.cumulative_length += 1
            scores = torch.bmm(q, keys[:, : filled + 1].transpose(1, 2)).mul_(self.scale)  # [heads, 1, n]
            attended = torch.bmm(scores.softmax(-1), values[:, : filled + 1])  # [heads, 1, head_dim]
            x = x + block.attn.c_proj(attended.view(1, -1))
            ln = block.ln_2
            h = F.layer_norm(x, self.width, ln.weight, ln.bias, ln.eps)
            x = x + block.mlp.c_proj(self._activate(block, block.mlp.c_fc(h)))
        ln = transformer.ln_f
        return self.lm_head(F.layer_norm(x, self.width, ln.weight, ln.bias, ln.eps))[None]  # [1, 1, vocab]
