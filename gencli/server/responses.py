"""What the server answers, in OpenAI's shapes: a choice's text and log-probabilities, usage,
server-sent events."""

from __future__ import annotations

import json
from typing import Any

from gencli.results import GenerationResult
from gencli.server.worker import ParsedRequest
from gencli.stop_strings import without_stop

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "interrupted": "length"}


def openai_logprobs(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """gencli's per-token log-probabilities in the completions API's shape; an echoed prompt's
    first token has none (null), as in OpenAI's."""
    offsets, offset = [], 0
    for step in steps:
        offsets.append(offset)
        offset += len(step["text"])
    return {
        "tokens": [step["text"] for step in steps],
        "token_logprobs": [step["logprob"] for step in steps],
        "top_logprobs": [
            None if step["logprob"] is None else {other["text"]: other["logprob"] for other in step["top"]}
            for step in steps
        ],
        "text_offset": offsets,
    }


def chat_logprobs(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """gencli's per-token log-probabilities in the chat API's shape."""

    def entry(record: dict[str, Any]) -> dict[str, Any]:
        return {"token": record["text"], "logprob": record["logprob"], "bytes": list(record["text"].encode())}

    return {
        "content": [
            {**entry(step), "top_logprobs": [entry(other) for other in step["top"]]} for step in steps
        ]
    }


def completion_text(result: GenerationResult, request: ParsedRequest) -> str:
    """The choice's text as OpenAI gives it: without the stop string that ended it, and after the
    prompt with echo."""
    text = without_stop(result.text, request.options.stop) if result.finish_reason == "stop" else result.text
    return result.prompt + text if request.echo else text


def scored_steps(result: GenerationResult, request: ParsedRequest) -> list[dict[str, Any]] | None:
    """The logprob records a choice reports: the prompt's (with echo), then the completion's."""
    if request.top_logprobs is None:
        return None
    return ((result.prompt_logprobs or []) if request.echo else []) + (result.logprobs or [])


def usage(results: list[GenerationResult], choices_per_prompt: int) -> dict[str, Any]:
    """Tokens for the whole request: each prompt once, every choice's completion."""
    firsts = results[::choices_per_prompt]
    prompt_tokens = sum(len(result.prompt_token_ids) for result in firsts)
    completion_tokens = sum(len(result.token_ids) for result in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": sum(result.prompt_cache_tokens for result in firsts)},
    }


def sse(data: Any) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
