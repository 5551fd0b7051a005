"""`scratch` mode: the from-scratch GPT-2 (gencli.scratch) with its own preallocated KV cache.

It runs the Hugging Face model's weights through code written from the formulas, and must choose
the same tokens as the other modes.
"""

from __future__ import annotations

import weakref

import torch
from transformers import PreTrainedModel

from gencli.engines.base import DecodeRequest, StepEngine
from gencli.scratch.model import ScratchCache, ScratchGPT2

# One conversion per loaded model, reused by every run in the process.
_converted: weakref.WeakKeyDictionary[PreTrainedModel, ScratchGPT2] = weakref.WeakKeyDictionary()


def scratch_model_for(model: PreTrainedModel) -> ScratchGPT2:
    if model not in _converted:
        _converted[model] = ScratchGPT2.from_hf(model)
    return _converted[model]


class ScratchEngine(StepEngine):
    name = "scratch"
    uses_cache = True

    def forward_module(self, model: PreTrainedModel) -> ScratchGPT2:
        return scratch_model_for(model)

    def new_cache(self, model: PreTrainedModel, max_length: int) -> ScratchCache:
        return scratch_model_for(model).new_cache(batch=1, max_length=max_length)

    def prefill(self, request: DecodeRequest) -> torch.Tensor:
        # Positions a prompt cache already holds are not run again.
        return self._next_logits(request, request.input_ids[:, request.cache.get_seq_length() :])

    def decode_one_token(self, request: DecodeRequest, sequence: torch.Tensor) -> torch.Tensor:
        return self._next_logits(request, sequence[:, -1:])

    @staticmethod
    def _next_logits(request: DecodeRequest, new_tokens: torch.Tensor) -> torch.Tensor:
        return scratch_model_for(request.model)(new_tokens, cache=request.cache)[:, -1]
