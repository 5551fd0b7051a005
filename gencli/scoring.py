"""Scoring a prompt: each token's log-probability under the raw model given the tokens before it,
as evaluators ask a server for it (lm-evaluation-harness's loglikelihood tasks send `echo` with
`logprobs` and read the prompt's own tokens back).

These are the model's log-softmax with no logits processor and no temperature, unlike a generated
token's, which is taken under the processed scores it was chosen from.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from gencli.generation import encode_prompt, logprob_record, run_record, token_entry
from gencli.loading import LoadedModel
from gencli.results import GenerationResult, Timings


def prompt_logprobs(loaded: LoadedModel, prompt_ids: list[int], count: int) -> list[dict[str, Any]]:
    """Per prompt token, gencli's logprob record (token, text, bytes, logprob, the `count` most
    likely tokens): one forward pass over the prompt. The first token, which nothing predicts, has
    logprob None and no alternatives."""
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([prompt_ids], device=loaded.device)).logits[0]  # [tokens, vocab]
    first = {**token_entry(loaded.tokenizer, prompt_ids[0], None), "top": []}
    # The token at position i is predicted by the logits at position i - 1.
    return [first] + [
        logprob_record(loaded.tokenizer, logits[position - 1], prompt_ids[position], count)
        for position in range(1, len(prompt_ids))
    ]


def score_prompt(
    loaded: LoadedModel, prompt: str | list[int], mode: str, count: int | None
) -> GenerationResult:
    """A run that generates nothing (OpenAI's `max_tokens: 0` with `echo`): the prompt scored with
    the `count` most likely tokens at each position, or only echoed when `count` is None."""
    started = time.perf_counter()
    prompt_ids = encode_prompt(loaded, prompt, 0)
    scored = None if count is None else prompt_logprobs(loaded, prompt_ids, count)
    timings = Timings(prefill_s=time.perf_counter() - started)
    return run_record(loaded, mode, prompt, prompt_ids, [], "length", timings, None, prompt_logprobs=scored)
