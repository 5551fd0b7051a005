"""`greedy` mode: no cache, so every step runs the whole sequence through the model again.

Step t costs a forward pass over prompt + t tokens: total work grows quadratically with length.
(The name is historical: like every mode, it samples too when asked.)
"""

from __future__ import annotations

import torch

from gencli.engines.base import DecodeRequest, StepEngine


class GreedyEngine(StepEngine):
    name = "greedy"
    uses_cache = False

    def prefill(self, request: DecodeRequest) -> torch.Tensor:
        return self._next_logits(request.input_ids)

    def decode_one_token(self, request: DecodeRequest, sequence: torch.Tensor) -> torch.Tensor:
        return self._next_logits(sequence)

    def _next_logits(self, sequence: torch.Tensor) -> torch.Tensor:
        # logits_to_keep=1: the head runs on the last position only, the one we sample from.
        return self.model(sequence, use_cache=False, logits_to_keep=1).logits[:, -1]
