"""The interface every decoding mode implements, and the token loops the hand-written modes share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from transformers import LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from gencli.cache import crop_cache
from gencli.padding import pad_token_id, padding_lengths, position_ids
from gencli.sampling import build_logits_processors, end_token_ids, select_next_token
from gencli.settings import DecodingOptions
from gencli.speculative import Proposal, Speculator, judge
from gencli.threads import adapt_threads

if TYPE_CHECKING:
    from gencli.constraints import CompiledConstraint


@dataclass
class DecodeRequest:
    """Everything a mode needs to continue a batch of prompts: usually one, or a left-padded batch."""

    tokenizer: PreTrainedTokenizerBase
    input_ids: torch.Tensor  # [batch, width]
    options: DecodingOptions
    eos_token_id: int | None
    stopping: StoppingCriteriaList
    # Receives the prompt ids first, then every new token as soon as it is chosen, exactly as
    # `generate` feeds its streamer; all output (text, timings, cache snapshots) comes from it.
    # A batch of more than one prompt has none.
    streamer: BaseStreamer | None
    # The mode's KV cache; it may already hold a prefix of the prompt, which is then not run again.
    cache: Any
    # Hears every step's processed scores ([batch, vocab]), the tokens chosen from them ([batch])
    # and the model's own logits before any processor ([batch, vocab]), when asked. Rows that have
    # finished get scores too: ignore them.
    on_scores: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
    # [batch, width] of 1 (token) / 0 (left padding) when the prompts have different lengths.
    attention_mask: torch.Tensor | None = None
    # The answer's shape (structured output), compiled; None for a free answer.
    constraint: CompiledConstraint | None = None
    # Speculative decoding (gencli.speculative): who proposes tokens, how many, and the counts.
    speculator: Speculator | None = None

    @property
    def padding_lengths(self) -> torch.Tensor | None:
        return None if self.attention_mask is None else padding_lengths(self.attention_mask)

    def logits_processors(self) -> LogitsProcessorList:
        """The processors `generate` would build for these options, left padding skipped."""
        return build_logits_processors(
            self.options,
            self.input_ids.shape[1],
            self.eos_token_id,
            padding_lengths=self.padding_lengths,
            device=self.input_ids.device,
            constraint=self.constraint,
        )

    @property
    def end_token_ids(self) -> list[int]:
        """The tokens that end a row: end-of-text (unless ignored), then the stop token ids."""
        return end_token_ids(self.eos_token_id, self.options)

    @property
    def pad_token_id(self) -> int:
        """What a finished row of a batch gets while the others go on (as in `generate`)."""
        return pad_token_id(self.tokenizer)


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

    def new_cache(self, max_length: int, batch: int = 1) -> Any:
        """A cache for `batch` rows of `max_length` positions, or None for a mode without one."""
        return None

    @abstractmethod
    def decode(self, request: DecodeRequest) -> torch.Tensor:
        """Generate until a stopping criterion fires for every row, handing every token to
        `request.streamer`; return the sequences, [batch, width + new] (finished rows padded)."""


class StepEngine(Engine):
    """A hand-written decoding loop: prefill the prompt, then produce one token per forward pass,
    or, with speculation, verify several proposed tokens in one pass (gencli.speculative)."""

    @abstractmethod
    def run(
        self, cache: Any, sequence: torch.Tensor, attention_mask: torch.Tensor | None, count: int = 1
    ) -> torch.Tensor:
        """The logits that follow each of the last `count` tokens of `sequence` ([batch, count,
        vocab]). A mode with a cache runs only the positions `cache` lacks and stores their keys
        and values; `attention_mask` covers the whole sequence when the batch is padded."""

    def roll_back(self, cache: Any, length: int) -> None:
        """Forget every position from `length` on: the cache then holds what a run that never saw
        them would hold (a rejected proposal)."""
        return  # a mode without a cache has nothing to forget

    def prefill(self, request: DecodeRequest) -> torch.Tensor:
        """Run the prompt; return the logits for the next token, [batch, vocab]."""
        return self.run(request.cache, request.input_ids, request.attention_mask)[:, -1]

    def decode(self, request: DecodeRequest) -> torch.Tensor:
        with torch.inference_mode():
            if request.streamer is not None:
                request.streamer.put(request.input_ids.cpu())
            sequence = decode_n_tokens(self, request, self.prefill(request))
        if request.streamer is not None:
            request.streamer.end()
        return sequence


class CachedStepEngine(StepEngine):
    """A loop over a KV cache: each forward pass runs only the positions the cache lacks, so the
    prefill skips a prefix the cache already holds and a decode step runs one token (or a
    proposal's tokens, which `roll_back` takes out again where they were refused)."""

    def run(
        self, cache: Any, sequence: torch.Tensor, attention_mask: torch.Tensor | None, count: int = 1
    ) -> torch.Tensor:
        new_tokens = sequence[:, int(cache.get_seq_length()) :]
        if attention_mask is None:
            return self.logits(cache, new_tokens, keep=count)
        positions = position_ids(attention_mask)[:, -new_tokens.shape[1] :]
        return self.logits(cache, new_tokens, attention_mask, positions, keep=count)

    def roll_back(self, cache: Any, length: int) -> None:
        crop_cache(cache, length)

    def next_logits(
        self,
        cache: Any,
        new_tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The logits for the token after `new_tokens`, [batch, vocab] (see `logits`)."""
        return self.logits(cache, new_tokens, attention_mask, positions)[:, -1]

    @abstractmethod
    def logits(
        self,
        cache: Any,
        new_tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        keep: int = 1,
    ) -> torch.Tensor:
        """Run `new_tokens` ([batch, new]) after what `cache` holds, storing their keys and values;
        return the logits that follow each of the last `keep` of them, [batch, keep, vocab]. In a
        left-padded batch, `attention_mask` ([batch, cached + new]) marks the padding and
        `positions` ([batch, new]) are the new tokens' position ids; without padding both are None."""


def decode_n_tokens(engine: StepEngine, request: DecodeRequest, logits: torch.Tensor) -> torch.Tensor:
    """Choose tokens until a stopping criterion has fired for every row; return the sequences.
    `logits` ([batch, vocab]) are the prefill's. With a speculator (gencli.speculative) each
    later pass also runs the tokens it proposed: the positions up to the first refused one give
    their tokens, each chosen from the sequence before it, and the cache is rolled back."""
    input_ids, speculator = request.input_ids, request.speculator
    processors = request.logits_processors()
    sequence, attention_mask = input_ids, request.attention_mask
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    proposal: Proposal | None = None  # what the last pass verified; None after the prefill
    rows = logits[:, None]  # [batch, 1 + proposed, vocab]: after the newest token, then each proposal
    while True:
        for index in range(1 + (0 if proposal is None else proposal.length)):
            # Same dtype and processor inputs as `generate`, so sampling sees identical scores.
            scores = processors(sequence, rows[:, index].to(dtype=torch.float32))
            accepted = None  # [batch]: the token is the proposed one
            if proposal is not None and index < proposal.length:
                next_token, accepted = judge(scores, proposal, index, request.options.samples)
            else:
                next_token = select_next_token(scores, request.options.samples)
            if request.on_scores is not None:
                request.on_scores(scores, next_token, rows[:, index])
            # A row that has finished only gets padding while the others go on, as in `generate`.
            next_token = torch.where(unfinished, next_token, request.pad_token_id)
            sequence = torch.cat([sequence, next_token[:, None]], dim=-1)
            if attention_mask is not None:
                attention_mask = torch.cat(
                    [attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], -1
                )
            if request.streamer is not None:
                request.streamer.put(next_token.cpu())
            unfinished &= ~request.stopping(sequence, scores)
            # Past a refused proposal every row needs a pass for its next token.
            if accepted is None or not unfinished.any() or not bool((accepted | ~unfinished).all()):
                break
        if proposal is not None:
            speculator.roll_back(engine, request.cache, sequence, proposal)
        if not unfinished.any():
            return sequence
        adapt_threads()
        if speculator is None:
            rows = engine.run(request.cache, sequence, attention_mask)
        else:
            proposal, rows = speculator.verify(engine, request, sequence, attention_mask, unfinished)
