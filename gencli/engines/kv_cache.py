"""`kv-cache` mode: run the prompt once, then feed only the newest token with the cache.

Each layer's keys and values for past positions live in a transformers `StaticCache`, allocated
once for prompt + new tokens (`cache.layers[i].keys`: [batch, heads, max_length, head_dim]) and
written in place, rather than a `DynamicCache` that grows by concatenation. A step costs one
token's work.

A step is the Hugging Face transformer's own forward pass, run by a twin of it that shares its
weights but takes `gencli.gemv`'s fast path for one-row products, the bulk of a step's time; the
prefill's products are the transformer's own. The logits come from the last hidden state alone,
through the LM head's weight by the same path.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import StaticCache

from gencli.engines.base import DecodeRequest, StepEngine
from gencli.gemv import Projection, with_fast_one_row_projections


@dataclass(frozen=True)
class FastDecoder:
    transformer: nn.Module
    lm_head: Projection


# One per loaded model, reused by every run in the process.
_decoders: weakref.WeakKeyDictionary[PreTrainedModel, FastDecoder] = weakref.WeakKeyDictionary()


def fast_decoder_for(model: PreTrainedModel) -> FastDecoder:
    if model not in _decoders:
        _decoders[model] = FastDecoder(
            transformer=with_fast_one_row_projections(model.transformer),
            lm_head=Projection(model.lm_head.weight, model.lm_head.bias, layout="out_in"),
        )
    return _decoders[model]


class KVCacheEngine(StepEngine):
    name = "kv-cache"
    uses_cache = True

    def new_cache(self, model: PreTrainedModel, max_length: int) -> StaticCache:
        return StaticCache(config=model.config, max_cache_len=max_length)

    def forward_module(self, model: PreTrainedModel) -> torch.nn.Module:
        return fast_decoder_for(model).transformer

    def prefill(self, request: DecodeRequest) -> torch.Tensor:
        # Positions a prompt cache already holds are not run again.
        return self._next_logits(request, request.input_ids[:, int(request.cache.get_seq_length()) :])

    def decode_one_token(self, request: DecodeRequest, sequence: torch.Tensor) -> torch.Tensor:
        return self._next_logits(request, sequence[:, -1:])

    @staticmethod
    def _next_logits(request: DecodeRequest, new_tokens: torch.Tensor) -> torch.Tensor:
        decoder = fast_decoder_for(request.model)
        body = decoder.transformer(new_tokens, past_key_values=request.cache, use_cache=True)
        return decoder.lm_head(body.last_hidden_state[:, -1])
