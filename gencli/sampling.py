"""Logits processing and token selection shared by every mode.

The manual loops use Hugging Face's own logits processors, in the order `generate` builds them
(repetition penalty, n-gram blocking, then temperature, top-k, top-p), and pick the next token
with the same calls `generate` makes (`softmax` + `multinomial`, or `argmax`). With the same seed,
the random stream is consumed identically, so all modes produce the same tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gencli.config import DecodingOptions


def build_logits_processors(
    options: DecodingOptions, padding_lengths: torch.Tensor | None = None
) -> LogitsProcessorList:
    """`padding_lengths` ([batch]): left-padding tokens per row, which the penalty must ignore."""
    processors = LogitsProcessorList()
    if options.repetition_penalty != 1.0:
        processors.append(
            RepetitionPenaltyLogitsProcessor(
                float(options.repetition_penalty), prompt_ignore_length=padding_lengths
            )
        )
    if options.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(options.no_repeat_ngram_size))
    if options.samples:
        if options.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(float(options.temperature)))
        if options.top_k != 0:
            processors.append(TopKLogitsWarper(top_k=options.top_k))
        if options.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=float(options.top_p)))
    return processors


def generate_kwargs(options: DecodingOptions) -> dict[str, Any]:
    """Arguments that make `model.generate` build exactly `build_logits_processors(options)`.

    Every value is explicit: a value left out would be filled from the checkpoint's
    generation_config or from HF's global defaults (top_k=50), and the modes would drift apart.
    """
    return {
        "do_sample": options.samples,
        "repetition_penalty": float(options.repetition_penalty),
        "no_repeat_ngram_size": options.no_repeat_ngram_size,
        "temperature": float(options.temperature) if options.samples else 1.0,
        "top_k": options.top_k if options.samples else 0,
        "top_p": float(options.top_p) if options.samples else 1.0,
        "max_new_tokens": options.max_new_tokens,
    }


def select_next_token(scores: torch.Tensor, sample: bool) -> torch.Tensor:
    """The token choice `GenerationMixin._sample` makes: [batch, vocab] scores -> [batch] ids."""
    if sample:
        probs = torch.nn.functional.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1).squeeze(1)
    return torch.argmax(scores, dim=-1)
