"""Logits processing and token selection shared by every mode.

The manual loops use Hugging Face's own logits processors, in the order `generate` builds them
(logit bias, repetition penalty, n-gram blocking, minimum length, suppressed tokens, then the
processors `generate` takes from its caller (OpenAI's frequency and presence penalties, which it
has none of), then the sampling warpers: temperature, top-k, top-p, min-p, typical-p, epsilon and
eta cutoffs), and pick the next token with the same calls `generate` makes (`softmax` +
`multinomial`, or `argmax`). With the same seed, the random stream is consumed identically, so all
modes produce the same tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitsProcessor,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from gencli.settings import DecodingOptions

if TYPE_CHECKING:
    from gencli.constraints import CompiledConstraint


class NoRepeatNGramAfterPadding(NoRepeatNGramLogitsProcessor):
    """Hugging Face's n-gram rule with each row's left padding left out: pad tokens (EOS for
    GPT-2) are not text, and counting them bans tokens the same prompt alone may choose."""

    def __init__(self, ngram_size: int, padding_lengths: torch.Tensor):
        super().__init__(ngram_size)
        self.padding_lengths = padding_lengths

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        padding = positions[None, :] < self.padding_lengths.to(input_ids.device)[:, None]
        # -1 is no token: an n-gram that reaches into the padding matches no real one.
        return super().__call__(input_ids.masked_fill(padding, -1), scores)


class FrequencyPresencePenalty(LogitsProcessor):
    """OpenAI's frequency and presence penalties: from the logit of every token generated so far,
    subtract count * frequency_penalty + (count > 0) * presence_penalty. The prompt's tokens (the
    first `prompt_length` positions) do not count; negative penalties encourage repetition."""

    def __init__(self, frequency_penalty: float, presence_penalty: float, prompt_length: int):
        for name, value in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
            if not -2 <= value <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
        if prompt_length < 0:
            raise ValueError(f"prompt_length must be 0 or more, got {prompt_length}")
        self.frequency_penalty, self.presence_penalty = frequency_penalty, presence_penalty
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length :]  # [batch, new]
        counts = torch.zeros_like(scores).scatter_add_(  # [batch, vocab]
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        present = (counts > 0).to(scores.dtype)
        return scores - counts * self.frequency_penalty - present * self.presence_penalty


def logit_bias_pairs(options: DecodingOptions) -> list[list[list[int] | float]] | None:
    """`logit_bias` as Hugging Face's `sequence_bias` takes it: one-token sequences and their bias."""
    return [[[token], bias] for token, bias in options.logit_bias.items()] or None


def processors_generate_lacks(
    options: DecodingOptions, prompt_length: int, constraint: CompiledConstraint | None = None
) -> LogitsProcessorList:
    """The processors `generate` cannot build from its own options: OpenAI's penalties, then the
    answer's shape (`constraint`, gencli.constraints). It runs them after its own and before the
    sampling warpers, where `build_logits_processors` puts them too, so that top-k and top-p
    choose among the tokens the shape allows."""
    processors = LogitsProcessorList()
    if options.frequency_penalty or options.presence_penalty:
        processors.append(
            FrequencyPresencePenalty(options.frequency_penalty, options.presence_penalty, prompt_length)
        )
    if constraint is not None:
        processors.append(constraint.processor(prompt_length))
    return processors


def build_logits_processors(
    options: DecodingOptions,
    prompt_length: int,
    eos_token_id: int | None,
    padding_lengths: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    constraint: CompiledConstraint | None = None,
) -> LogitsProcessorList:
    """The processors `generate` builds for `options`, in its order.

    `prompt_length`: prompt positions (padded width in a batch), which `min_new_tokens` and the
    frequency and presence penalties skip; `eos_token_id`: the end-of-text token that
    `min_new_tokens` holds back with the `stop_token_ids` (None: nothing stops at EOS);
    `padding_lengths` ([batch]): left-padding tokens per row, which the repetition penalty and
    the n-gram rule must ignore; `constraint`: the answer's shape, compiled."""
    processors = LogitsProcessorList()
    if options.logit_bias:
        processors.append(SequenceBiasLogitsProcessor(logit_bias_pairs(options)))
    if options.repetition_penalty != 1.0:
        processors.append(
            RepetitionPenaltyLogitsProcessor(
                float(options.repetition_penalty), prompt_ignore_length=padding_lengths
            )
        )
    if options.no_repeat_ngram_size > 0:
        processors.append(
            NoRepeatNGramLogitsProcessor(options.no_repeat_ngram_size)
            if padding_lengths is None
            else NoRepeatNGramAfterPadding(options.no_repeat_ngram_size, padding_lengths)
        )
    ending = end_token_ids(eos_token_id, options)
    if options.min_new_tokens > 0 and ending:
        processors.append(
            MinNewTokensLengthLogitsProcessor(prompt_length, options.min_new_tokens, ending, device=device)
        )
    if options.suppress_tokens:
        processors.append(SuppressTokensLogitsProcessor(list(options.suppress_tokens), device=device))
    processors.extend(processors_generate_lacks(options, prompt_length, constraint))
    if options.samples:
        if options.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(float(options.temperature)))
        if options.top_k != 0:
            processors.append(TopKLogitsWarper(top_k=options.top_k))
        if options.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=float(options.top_p)))
        if options.min_p > 0:
            processors.append(MinPLogitsWarper(min_p=float(options.min_p)))
        if options.typical_p < 1.0:
            processors.append(TypicalLogitsWarper(mass=float(options.typical_p)))
        if options.epsilon_cutoff > 0:
            processors.append(EpsilonLogitsWarper(epsilon=float(options.epsilon_cutoff)))
        if options.eta_cutoff > 0:
            processors.append(EtaLogitsWarper(epsilon=float(options.eta_cutoff), device=device))
    return processors


def end_token_ids(eos_token_id: int | None, options: DecodingOptions) -> list[int]:
    """The tokens that end a row: the end-of-text token (None with ignore_eos), then `stop_token_ids`."""
    return list(dict.fromkeys([*([] if eos_token_id is None else [eos_token_id]), *options.stop_token_ids]))


def generate_kwargs(options: DecodingOptions, build_processors: bool = True) -> dict[str, Any]:
    """Arguments that make `model.generate` build exactly `build_logits_processors(options)` (given
    `processors_generate_lacks` as its `logits_processor`), or, with `build_processors=False`,
    none at all (the caller passes its own list).

    Every value is explicit: a value left out would be filled from HF's global defaults
    (top_k=50), and the modes would drift apart.
    """
    build = build_processors
    samples = options.samples and build
    return {
        "do_sample": options.samples,
        "min_new_tokens": (options.min_new_tokens or None) if build else None,
        "suppress_tokens": (list(options.suppress_tokens) or None) if build else None,
        "sequence_bias": logit_bias_pairs(options) if build else None,
        "min_p": float(options.min_p) if samples and options.min_p > 0 else None,
        "typical_p": float(options.typical_p) if samples else 1.0,
        "epsilon_cutoff": float(options.epsilon_cutoff) if samples else 0.0,
        "eta_cutoff": float(options.eta_cutoff) if samples else 0.0,
        "repetition_penalty": float(options.repetition_penalty) if build else 1.0,
        "no_repeat_ngram_size": options.no_repeat_ngram_size if build else 0,
        "temperature": float(options.temperature) if samples else 1.0,
        "top_k": options.top_k if samples else 0,
        "top_p": float(options.top_p) if samples else 1.0,
        "max_new_tokens": options.max_new_tokens,
    }


def select_next_token(
    scores: torch.Tensor, sample: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The token choice `GenerationMixin._sample` makes: [batch, vocab] scores -> [batch] ids.
    `generator`: a row's own random stream (a served request in a batch), drawn from as the
    global one is after `torch.manual_seed`."""
    if sample:
        probs = torch.nn.functional.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
    return torch.argmax(scores, dim=-1)


def token_logprobs(scores: torch.Tensor, token: int, count: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log-probability under the processed scores ([vocab], what the choice was
    made from), and the `count` most likely tokens with theirs; tokens a processor ruled out
    (-inf) are not listed."""
    logprobs = torch.log_softmax(scores.float(), dim=-1)
    values, ids = logprobs.topk(min(count, logprobs.numel()))
    top = [
        (int(i), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True) if v != float("-inf")
    ]
    return float(logprobs[token]), top
