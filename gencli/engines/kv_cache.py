"""`kv-cache` mode: run the prompt once, then feed only the newest token with the cache.

Each layer's keys and values for past positions live in a transformers `DynamicCache`
(`cache.layers[i].keys`, shape [batch, heads, seq, head_dim]); a step costs one token's work.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache

from gencli.engines.base import DecodeRequest, StepEngine


class KVCacheEngine(StepEngine):
    name = "kv-cache"
    uses_cache = True

    def new_cache(self, model: PreTrainedModel, max_length: int) -> DynamicCache:
        return DynamicCache(config=model.config)

    def prefill(self, request: DecodeRequest) -> torch.Tensor:
        output = request.model(
            request.input_ids, past_key_values=request.cache, use_cache=True, logits_to_keep=1
        )
        return output.logits[:, -1]

    def decode_one_token(self, request: DecodeRequest, sequence: torch.Tensor) -> torch.Tensor:
        output = request.model(sequence[:, -1:], past_key_values=request.cache, use_cache=True)
        return output.logits[:, -1]
