"""What the server answers, in OpenAI's shapes: a choice's text and log-probabilities, usage, the
Responses API's response object, server-sent events."""

from __future__ import annotations

import json
from typing import Any

from gencli.results import GenerationResult
from gencli.server.jobs import ParsedRequest
from gencli.settings import DecodingOptions
from gencli.stop_strings import without_stop

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "interrupted": "length"}


def openai_logprobs(steps: list[dict[str, Any]], offset: int = 0) -> dict[str, Any]:
    """gencli's per-token log-probabilities in the completions API's shape, the first token at
    `offset` in the choice's text; an echoed prompt's first token has none (null), as in OpenAI's."""
    offsets = []
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
        return {"token": record["text"], "logprob": record["logprob"], "bytes": record["bytes"]}

    return {
        "content": [
            {**entry(step), "top_logprobs": [entry(other) for other in step["top"]]} for step in steps
        ]
    }


def completion_text(result: GenerationResult, request: ParsedRequest) -> str:
    """The choice's text as OpenAI gives it: without the stop string that ended it (or through it,
    as vLLM's include_stop_str_in_output asks), and after the prompt with echo."""
    stops = request.options.stop
    ended_by_stop = result.finish_reason == "stop"
    text = without_stop(result.text, stops, request.include_stop) if ended_by_stop else result.text
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


def response_object(
    identity: dict[str, Any],
    body: dict[str, Any],
    options: DecodingOptions,
    result: GenerationResult | None,
    text: str,
) -> dict[str, Any]:
    """The Responses API's response: in progress (no result yet), or completed, or incomplete when
    the length ran out. `identity`: its id, created_at, model and message_id; `body`: the request,
    whose settings it repeats."""
    status = "in_progress"
    if result is not None:
        status = "incomplete" if result.finish_reason in ("length", "interrupted") else "completed"
    reply = {
        "type": "message",
        "id": identity["message_id"],
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }
    usage_ = None
    if result is not None:
        prompt_tokens, completion_tokens = len(result.prompt_token_ids), len(result.token_ids)
        usage_ = {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": result.prompt_cache_tokens},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens,
        }
    return {
        "id": identity["id"],
        "object": "response",
        "created_at": identity["created_at"],
        "status": status,
        "model": identity["model"],
        "output": [reply],
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": options.temperature if options.samples else 0.0,
        "top_p": options.top_p,
        "parallel_tool_calls": False,
        "tool_choice": "none",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "store": False,
        "previous_response_id": None,
        "reasoning": None,
        "metadata": body.get("metadata") or {},
        "user": body.get("user"),
        "usage": usage_,
    }


def responses_event(kind: str, number: int, data: dict[str, Any]) -> str:
    """One of the Responses API's typed server-sent events, numbered in its stream."""
    return f"event: {kind}\n" + sse({"type": kind, "sequence_number": number, **data})


def sse(data: Any) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
