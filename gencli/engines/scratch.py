"""`scratch` mode: the from-scratch GPT-2 (gencli.scratch) with its own preallocated KV cache.

It runs the Hugging Face model's weights through code written from the formulas, and must choose
the same tokens as the other modes.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from gencli.engines.base import CachedStepEngine
from gencli.scratch.model import ScratchCache, ScratchGPT2


class ScratchEngine(CachedStepEngine):
    name = "scratch"
    uses_cache = True

    def __init__(self, model: PreTrainedModel):
        super().__init__(model)
        self.scratch = ScratchGPT2.from_hf(model)

    @property
    def forward_module(self) -> ScratchGPT2:
        return self.scratch

    def new_cache(self, max_length: int, batch: int = 1) -> ScratchCache:
        return self.scratch.new_cache(batch=batch, max_length=max_length)

    def logits(
        self,
        cache: ScratchCache,
        new_tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        keep: int = 1,
    ) -> torch.Tensor:
        return self.scratch(
            new_tokens, cache=cache, attention_mask=attention_mask, position_ids=positions, keep=keep
        )
