"""`kv-cache` mode: run the prompt once, then feed only the newest token with the cache.

Each layer's keys and values for past positions live in a transformers `StaticCache`, allocated
once for prompt + new tokens (`cache.layers[i].keys`: [batch, heads, max_length, head_dim]) and
written in place, rather than a `DynamicCache` that grows by concatenation. A step costs one
token's work.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import StaticCache

from gencli.engines.base import DecodeRequest, StepEngine


class KVCacheEngine(StepEngine):
    name = "kv-cache"
    uses_cache = True

    def new_cache(self, model: PreTrainedModel, max_length: int) -> StaticCache:
        return StaticCache(config=model.config, max_cache_len=max_length)

    def prefill(self, request: DecodeRequest) -> torch.Tensor:
        # Positions a prompt cache already holds are not run again.
        uncached = request.input_ids[:, int(request.cache.get_seq_length()) :]
        output = request.model(uncached, past_key_values=request.cache, use_cache=True, logits_to_keep=1)
        return output.logits[:, -1]

    def decode_one_token(self, request: DecodeRequest, sequence: torch.Tensor) -> torch.Tensor:
        output = request.model(sequence[:, -1:], past_key_values=request.cache, use_cache=True)
        return output.logits[:, -1]
