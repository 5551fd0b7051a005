"""`greedy` mode: no cache, so every step runs the whole sequence through the model again.

Step t costs a forward pass over prompt + t tokens: total work grows quadratically with length.
(The name is historical: like every mode, it samples too when asked.)
"""

from __future__ import annotations

import torch

from gencli.engines.base import StepEngine
from gencli.padding import position_ids


class GreedyEngine(StepEngine):
    name = "greedy"
    uses_cache = False

    def run(
        self, cache: None, sequence: torch.Tensor, attention_mask: torch.Tensor | None, count: int = 1
    ) -> torch.Tensor:
        positions = None if attention_mask is None else position_ids(attention_mask)
        # logits_to_keep: the head runs on the positions we choose from only.
        output = self.model(
            sequence,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=False,
            logits_to_keep=count,
        )
        return output.logits  # [batch, count, vocab]
