"""`kv-cache` mode: run the prompt once, then feed only the newest token with the cache.

Each layer's keys and values for past positions live in a transformers `StaticCache`, allocated
once (`cache.layers[i].keys`: [batch, heads, max_length, head_dim]) and written in place, rather
than a `DynamicCache` that grows by concatenation. A step costs one token's work.

A step is the Hugging Face transformer's own forward pass, run by a twin of it that shares its
weights but takes `gencli.gemv`'s fast path for one-row products, the bulk of a step's time; the
prefill's products are the transformer's own. The logits come from the last hidden state alone,
through the LM head's weight by the same path.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import StaticCache

from gencli.engines.base import CachedStepEngine
from gencli.gemv import fast_projection, with_fast_one_row_projections
from gencli.transformers_compat import cache_argument


class KVCacheEngine(CachedStepEngine):
    name = "kv-cache"
    uses_cache = True

    def __init__(self, model: PreTrainedModel):
        super().__init__(model)
        self.transformer = with_fast_one_row_projections(model.transformer)
        self.lm_head = fast_projection(model.lm_head)

    @property
    def forward_module(self) -> torch.nn.Module:
        return self.transformer

    def new_cache(self, max_length: int, batch: int = 1) -> StaticCache:
        # A StaticCache takes its batch size from the first keys written into it.
        return StaticCache(config=self.model.config, max_cache_len=max_length)

    def next_logits(
        self,
        cache: StaticCache,
        new_tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        body = self.transformer(
            new_tokens,
            **cache_argument(cache),
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
        )
        return self.lm_head(body.last_hidden_state[:, -1])
