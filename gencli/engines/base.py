"""The interface every decoding mode implements, and the token loop the hand-written modes share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteriaList
from transformers.cache_utils import Cache
from transformers.generation.streamers import BaseStreamer

from gencli.sampling import build_logits_processors, select_next_token
from gencli.settings import DecodingOptions


@dataclass
class DecodeRequest:
    """Everything a mode needs to continue one prompt (batch size 1)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    input_ids: torch.Tensor
    options: DecodingOptions
    eos_token_id: int | None
    stopping: StoppingCriteriaList
    # Receives the prompt ids first, then every new token as soon as it is chosen, exactly as
    # `generate` feeds its streamer; all output (text, timings, cache snapshots) comes from it.
    streamer: BaseStreamer
    cache: Cache | None


class Engine(ABC):
    name: ClassVar[str]
    uses_cache: ClassVar[bool]

    def forward_module(self, model: PreTrainedModel) -> torch.nn.Module:
        """The module whose forward passes this mode runs (its first one is the prefill)."""
        return model

    def new_cache(self, model: PreTrainedModel, max_length: int) -> Cache | None:
        """A cache for `max_length` positions (prompt + new tokens), or None for a mode without one."""
        return None

    @abstractmethod
    def decode(self, request: DecodeRequest) -> None:
        """Generate until a stopping criterion fires, handing every token to `request.streamer`."""


class StepEngine(Engine):
    """A hand-written decoding loop: prefill the prompt, then produce one token per forward pass."""

    @abstractmethod
    def prefill(self, request: DecodeRequest) -> torch.Tensor:
        """Run the prompt; return the logits for the next token, [batch, vocab]."""

    @abstractmethod
    def decode_one_token(self, request: DecodeRequest, sequence: torch.Tensor) -> torch.Tensor:
        """Return the logits that follow `sequence`, whose last token the model has not seen yet."""

    def decode(self, request: DecodeRequest) -> None:
        with torch.inference_mode():
            request.streamer.put(request.input_ids.cpu())
            logits = self.prefill(request)
            decode_n_tokens(self, request, logits)
        request.streamer.end()


def decode_n_tokens(engine: StepEngine, request: DecodeRequest, logits: torch.Tensor) -> torch.Tensor:
    """Choose tokens until a stopping criterion fires; return the whole sequence."""
    processors = build_logits_processors(
        request.options, request.input_ids.shape[1], request.eos_token_id, device=request.input_ids.device
    )
    sequence = request.input_ids
    while True:
        # Same dtype and processor inputs as `generate`, so sampling sees identical scores.
        scores = processors(sequence, logits.to(dtype=torch.float32))
        next_token = select_next_token(scores, request.options.samples)
        sequence = torch.cat([sequence, next_token[:, None]], dim=-1)
        request.streamer.put(next_token.cpu())
        if request.stopping(sequence, scores).any():
            return sequence
        logits = engine.decode_one_token(request, sequence)
