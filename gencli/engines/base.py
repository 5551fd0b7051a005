"""The interface every decoding mode implements, and the token loops the hand-written modes share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from gencli.sampling import build_logits_processors, select_next_token
from gencli.settings import DecodingOptions


@dataclass
class DecodeRequest:
    """Everything a mode needs to continue one prompt (batch size 1)."""

    tokenizer: PreTrainedTokenizerBase
    input_ids: torch.Tensor
    options: DecodingOptions
    eos_token_id: int | None
    stopping: StoppingCriteriaList
    # Receives the prompt ids first, then every new token as soon as it is chosen, exactly as
    # `generate` feeds its streamer; all output (text, timings, cache snapshots) comes from it.
    streamer: BaseStreamer
    # The mode's KV cache; it may already hold a prefix of the prompt, which is then not run again.
    cache: Any
    # Hears every step's processed scores ([vocab]) and the token chosen from them, when asked.
    on_scores: Callable[[torch.Tensor, int], None] | None = None


class Engine(ABC):
    """One decoding mode, built once per loaded model (`LoadedModel.engine(mode)`) and reused."""

    name: ClassVar[str]
    uses_cache: ClassVar[bool]

    def __init__(self, model: PreTrainedModel):
        self.model = model

    @property
    def forward_module(self) -> torch.nn.Module:
        """The module whose forward passes this mode runs (its first one is the prefill)."""
        return self.model

    def new_cache(self, max_length: int) -> Any:
        """A cache for `max_length` positions, or None for a mode without one."""
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


class CachedStepEngine(StepEngine):
    """A loop over a KV cache: each forward pass runs only the positions the cache lacks, so the
    prefill skips a prefix the cache already holds and a decode step runs one token."""

    def prefill(self, request: DecodeRequest) -> torch.Tensor:
        return self.next_logits(request.cache, request.input_ids[:, int(request.cache.get_seq_length()) :])

    def decode_one_token(self, request: DecodeRequest, sequence: torch.Tensor) -> torch.Tensor:
        return self.next_logits(request.cache, sequence[:, -1:])

    @abstractmethod
    def next_logits(self, cache: Any, new_tokens: torch.Tensor) -> torch.Tensor:
        """Run `new_tokens` ([batch, new]) after what `cache` holds, storing their keys and values;
        return the logits for the token after the last one, [batch, vocab]."""


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
        if request.on_scores is not None:
            request.on_scores(scores[0], int(next_token[0]))
        sequence = torch.cat([sequence, next_token[:, None]], dim=-1)
        request.streamer.put(next_token.cpu())
        if request.stopping(sequence, scores).any():
            return sequence
        logits = engine.decode_one_token(request, sequence)
