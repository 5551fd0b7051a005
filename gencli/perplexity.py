"""Perplexity and bits per byte of a text, with a sliding window (the method of Hugging Face's
perplexity guide; llama.cpp's `llama-perplexity` reports the same quantity).

The text is tokenized once. A window of `context` tokens moves by `stride`; each token is scored
once, by the first window that predicts it, and sees at least `context - stride` tokens before it
(all before it, in the first window). The sum of the tokens' negative log-likelihoods gives

    perplexity    = exp(NLL / scored tokens)
    bits per byte = NLL / ln 2 / UTF-8 bytes of the scored tokens

Bits per byte does not depend on the tokenizer, so it compares models with different vocabularies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from gencli.errors import GencliError
from gencli.loading import LoadedModel
from gencli.tokens import token_bytes


@dataclass
class PerplexityReport:
    model: str
    weights: str
    context: int
    stride: int
    tokens: int  # in the whole text
    scored_tokens: int = 0  # every token but the first, once the run is complete
    scored_bytes: int = 0
    nll: float = 0.0  # nats, summed over the scored tokens
    windows: int = 0
    interrupted: bool = False

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.scored_tokens) if self.scored_tokens else math.nan

    @property
    def bits_per_token(self) -> float:
        return self.nll / math.log(2) / self.scored_tokens if self.scored_tokens else math.nan

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.scored_bytes if self.scored_bytes else math.nan

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "perplexity": self.perplexity,
            "bits_per_token": self.bits_per_token,
            "bits_per_byte": self.bits_per_byte,
        }


def windows(count: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over `count` tokens: positions
    first..end-1 are scored by the window begin..end-1, and every position from 1 on exactly once
    (`stride` < `context`, so a window always holds the token before the first it scores)."""
    spans, scored_to = [], 1
    for begin in range(0, count, stride):
        end = min(begin + context, count)
        spans.append((begin, end, scored_to))
        scored_to = end
        if end == count:
            break
    return spans


@dataclass(frozen=True)
class PerplexityJob:
    """A text's token ids and the window to score them with, checked."""

    ids: list[int]
    context: int
    stride: int


def prepare(
    loaded: LoadedModel, text: str, context: int | None = None, stride: int | None = None
) -> PerplexityJob:
    """Tokenize and check: `context` defaults to the model's, `stride` to half the context."""
    context = context or loaded.context_length
    if not 2 <= context <= loaded.context_length:
        raise GencliError(
            f"the context must be 2 to {loaded.context_length} tokens for this model, got {context}"
        )
    stride = stride or context // 2
    if not 1 <= stride < context:
        # A window that moved by its whole width could not predict its own first token.
        raise GencliError(
            f"the stride must be 1 to {context - 1} tokens (less than the context), got {stride}"
        )
    ids = loaded.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) < 2:
        raise GencliError("the text has fewer than 2 tokens: there is nothing to predict; give more text")
    return PerplexityJob(ids, context, stride)


def measure_perplexity(
    loaded: LoadedModel, job: PerplexityJob, on_window: Callable[[int], None] | None = None
) -> PerplexityReport:
    """Score the job's tokens; `on_window(tokens scored)` after each window. Ctrl-C returns what
    was scored so far."""
    ids = job.ids
    report = PerplexityReport(loaded.name, loaded.weights, job.context, job.stride, tokens=len(ids))
    all_ids = torch.tensor(ids, device=loaded.device)
    try:
        with torch.inference_mode():
            for begin, end, first in windows(len(ids), job.context, job.stride):
                logits = loaded.model(all_ids[None, begin:end]).logits[0]  # [end - begin, vocab]
                # Position p is predicted by the logits at p - 1.
                predicted = torch.log_softmax(logits[first - 1 - begin : end - 1 - begin].float(), dim=-1)
                targets = all_ids[first:end]
                report.nll -= float(predicted.gather(-1, targets[:, None]).sum())
                report.scored_tokens += end - first
                pieces = (token_bytes(loaded.tokenizer, token) for token in ids[first:end])
                report.scored_bytes += sum(map(len, pieces))
                report.windows += 1
                if on_window:
                    on_window(end - first)
    except KeyboardInterrupt:
        report.interrupted = True
    return report
