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
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

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


class Layer(NamedTuple):
    """What one block's step reads, looked up once: a module's attribute costs a lookup through
    `nn.Module.__getattr__`, and a module call its hooks' bookkeeping, at every step."""

    ln_1: tuple[torch.Tensor, torch.Tensor, float]  # weight, bias, eps
    qkv: Callable[[torch.Tensor], torch.Tensor]  # one-row projections: [1, in] -> [1, out]
    attention_out: Callable[[torch.Tensor], torch.Tensor]
    ln_2: tuple[torch.Tensor, torch.Tensor, float]
    expand: Callable[[torch.Tensor], torch.Tensor]
    activation: Callable[[torch.Tensor], torch.Tensor]
    contract: Callable[[torch.Tensor], torch.Tensor]


def _one_row(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return getattr(module, "one_row", module)


def _norm(module: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor, float]:
    return module.weight, module.bias, module.eps


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch._C._nn.gelu(x, approximate="tanh")  # F.gelu without its wrapper's checks


class OneTokenStep:
    """Runs one token through a transformers GPT-2 body (`transformer`, whose projections may be
    `Projection`s) and an LM head, reading and extending a `FilledStaticCache`."""

    def __init__(self, transformer: nn.Module, lm_head: nn.Module):
        config = transformer.config
        self.heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.width = (config.n_embd,)
        self.scale = 1 / math.sqrt(self.head_dim)
        self.token_embedding, self.position_embedding = transformer.wte.weight, transformer.wpe.weight
        self.ln_f = _norm(transformer.ln_f)
        self.lm_head = _one_row(lm_head)
        float32 = self.token_embedding.dtype == torch.float32
        self.attend = self._attend_float32 if float32 else self._attend_sdpa
        self.layers = [
            Layer(
                _norm(block.ln_1),
                _one_row(block.attn.c_attn),
                _one_row(block.attn.c_proj),
                _norm(block.ln_2),
                _one_row(block.mlp.c_fc),
                _tanh_gelu if config.activation_function in TANH_GELU else block.mlp.act,
                _one_row(block.mlp.c_proj),
            )
            for block in transformer.h
        ]

    def _attend_float32(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """softmax(q · keysᵀ / √head_dim) · values for q [heads, 1, head_dim], keys and values
        [heads, n, head_dim]: two small bmm, 35-50 us a layer where SDPA takes 85 (2-core EPYC)."""
        scores = torch.bmm(q, keys.transpose(1, 2)).mul_(self.scale)  # [heads, 1, n]
        return torch.bmm(scores.softmax(-1), values)

    @staticmethod
    def _attend_sdpa(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The same through SDPA, whose kernel converts bfloat16 and float16 as it reads them: a
        bmm in those dtypes falls back to a loop on a CPU without them (165-290 us against 130)."""
        return F.scaled_dot_product_attention(q[None], keys[None], values[None])[0]

    def __call__(self, cache: FilledStaticCache, token: torch.Tensor) -> torch.Tensor:
        """token: [1, 1], after the positions `cache` holds (its position id is their count).
        Returns the logits after it, [1, 1, vocab]."""
        # torch's own ops, not their Python wrappers (torch.nn.functional): at ~250 operations a
        # step, each wrapper's checks cost as much as a small operation.
        heads, head_dim, width, layer_norm = self.heads, self.head_dim, self.width, torch.layer_norm
        filled = int(cache.layers[0].cumulative_length)
        x = self.token_embedding[token[0]] + self.position_embedding[filled]  # [1, n_embd]
        for layer, stored in zip(self.layers, cache.layers, strict=True):
            h = layer_norm(x, width, *layer.ln_1)
            q, k, v = layer.qkv(h).view(3, heads, 1, head_dim).unbind(0)  # [heads, 1, head_dim] each
            keys, values = stored.keys[0], stored.values[0]  # [heads, max_length, head_dim]
            keys.narrow(1, filled, 1).copy_(k)
            values.narrow(1, filled, 1).copy_(v)
            stored.cumulative_length += 1
            attended = self.attend(q, keys.narrow(1, 0, filled + 1), values.narrow(1, 0, filled + 1))
            x = x + layer.attention_out(attended.view(1, -1))  # attended: [heads, 1, head_dim]
            h = layer_norm(x, width, *layer.ln_2)
            x = x + layer.contract(layer.activation(layer.expand(h)))
        return self.lm_head(layer_norm(x, width, *self.ln_f))[None]  # [1, 1, vocab]
