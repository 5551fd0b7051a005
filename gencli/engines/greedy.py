"""`greedy` mode: no cache, so every step runs the whole sequence through the model again.

Step t costs a forward pass over prompt + t tokens: total work grows quadratically with length.
(The name is historical: like every mode, it samples too when asked.)
"""

from __future__ import annotations

import torch

from gencli.engines.base import DecodeRequest, StepEngine
from gencli.padding import position_ids


class GreedyEngine(StepEngine):
    name = "greedy"
    uses_cache = False

    def prefill(self, request: DecodeRequest) -> torch.Tensor:
        return self._next_logits(request.input_ids, request.attention_mask)

    def decode_one_token(
        self, request: DecodeRequest, sequence: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        return self._next_logits(sequence, attention_mask)

    def _next_logits(self, sequence: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        positions = None if attention_mask is None else position_ids(attention_mask)
        # logits_to_keep=1: the head runs on the last position only, the one we sample from.
        output = self.model(
            sequence, attention_mask=attention_mask, position_ids=positions, use_cache=False, logits_to_keep=1
        )
        return output.logits[:, -1]
