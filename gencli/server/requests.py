"""What a request asks for, checked: OpenAI's completions and chat completions, and gencli's own
/v1/generate, each turned into one `ParsedRequest` per choice. Every error names the request's field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gencli.server.errors import ApiError
from gencli.server.worker import ParsedRequest
from gencli.settings import DECODING_KEYS, DecodingOptions, SettingError, Settings, check_values

# OpenAI's sampling fields, and the gencli setting each one sets (ignore_eos is vLLM's extra field).
_OPENAI_TO_GENCLI = {
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
    "ignore_eos": "ignore_eos",
}
_GENCLI_TO_OPENAI = {value: key for key, value in _OPENAI_TO_GENCLI.items()}
_OPENAI_ACCEPTED = {"model", "stream", "stream_options", "user", "n", *_OPENAI_TO_GENCLI}
_COMPLETION_ACCEPTED = {*_OPENAI_ACCEPTED, "prompt", "logprobs", "echo"}
_CHAT_ACCEPTED = {*_OPENAI_ACCEPTED, "messages", "logprobs", "top_logprobs", "max_completion_tokens"}
# Fields gencli cannot honour, with the value that asks for nothing and why it is refused otherwise.
_OPENAI_REFUSED = {
    "best_of": (1, "gencli returns the n choices it generates; use n"),
    "presence_penalty": (0, "use gencli's repetition_penalty through /v1/generate"),
    "frequency_penalty": (0, "use gencli's repetition_penalty through /v1/generate"),
    "logit_bias": ({}, "logit bias is not implemented"),
    "suffix": (None, "insertion is not implemented"),
}
MAX_CHOICES = 16  # prompts x n in one request; each choice is decoded on its own


def _check_fields(body: Any, accepted: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - accepted)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", param=unknown[0])
    return body


def _checked(values: dict[str, Any], field_name: Callable[[str], str] = str) -> dict[str, Any]:
    """Values through the settings schema; an error names the request's field."""
    try:
        return check_values(values, name=lambda key: repr(field_name(key)))
    except SettingError as problem:
        raise ApiError(400, str(problem), param=field_name(problem.key)) from None


def _one_prompt(prompt: Any, vocab_size: int) -> str | list[int] | None:
    """A prompt as text or token ids, or None when it is neither."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ApiError(400, "the prompt is empty; send text or token ids in 'prompt'", param="prompt")
        return prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        if not all(0 <= token < vocab_size for token in prompt):
            raise ApiError(400, f"prompt token ids must be in [0, {vocab_size})", param="prompt")
        return prompt
    return None


def _prompts(body: dict[str, Any], vocab_size: int) -> list[str | list[int]]:
    """OpenAI's prompt: a string, a list of token ids, or a list of either (one choice each)."""
    prompt = body.get("prompt")
    single = _one_prompt(prompt, vocab_size)
    if single is not None:
        return [single]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        prompts = [_one_prompt(item, vocab_size) for item in prompt]
        if all(item is not None for item in prompts):
            return prompts
    raise ApiError(
        400,
        "'prompt' must be a string, a list of token ids, or a non-empty list of either",
        param="prompt",
    )


def _top_logprobs(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 20:
        raise ApiError(400, f"'{name}' must be an integer from 0 to 20", param=name)
    return value


def _choices(body: dict[str, Any], prompts: int) -> int:
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ApiError(400, "'n' must be an integer, 1 or more", param="n")
    if n * prompts > MAX_CHOICES:
        raise ApiError(400, f"prompts x n must be at most {MAX_CHOICES}, got {prompts} x {n}", param="n")
    return n


def _sampling(body: dict[str, Any], defaults: Settings) -> DecodingOptions:
    """OpenAI's sampling fields on top of the server's settings; errors name the request's field."""
    for name, (neutral, why) in _OPENAI_REFUSED.items():
        if body.get(name) not in (None, neutral):
            raise ApiError(400, f"'{name}' = {body[name]!r} is not supported: {why}", param=name)
    values = {_OPENAI_TO_GENCLI[key]: body[key] for key in _OPENAI_TO_GENCLI if body.get(key) is not None}
    if "temperature" in values:  # OpenAI samples at any temperature above 0
        values["sample"] = values["temperature"] != 0
    return defaults.decoding.model_copy(update=_checked(values, lambda key: _GENCLI_TO_OPENAI.get(key, key)))


def _one_per_choice(
    prompts: list[str | list[int]], n: int, options: DecodingOptions, **fields: Any
) -> list[ParsedRequest]:
    """A request per choice, in OpenAI's index order (prompt by prompt, n each). Seeded sampling
    gives choice j of a prompt the seed + j, so the n choices differ and each can be replayed."""
    requests = []
    for prompt in prompts:
        for j in range(n):
            seeded = options.seed is not None and options.samples and j > 0
            choice = options.model_copy(update={"seed": (options.seed + j) % 2**64}) if seeded else options
            requests.append(ParsedRequest(prompt, options=choice, n=n, **fields))
    return requests


def completion_request(body: Any, defaults: Settings, vocab_size: int) -> list[ParsedRequest]:
    """An OpenAI completion request, one ParsedRequest per choice; fields left out take the server's
    settings. `max_tokens: 0` with `echo` scores the prompt and generates nothing."""
    body = _check_fields(body, _COMPLETION_ACCEPTED | set(_OPENAI_REFUSED))
    echo = body.get("echo") or False
    if not isinstance(echo, bool):
        raise ApiError(400, "'echo' must be true or false", param="echo")
    generates = body.get("max_tokens") != 0
    if not generates and not echo:
        raise ApiError(400, "'max_tokens' = 0 generates nothing: it needs 'echo': true", param="max_tokens")
    stream = bool(body.get("stream"))
    if echo and stream:
        raise ApiError(400, "'echo' with 'stream' is not supported: ask without stream", param="echo")
    options = _sampling(
        {key: value for key, value in body.items() if generates or key != "max_tokens"}, defaults
    )
    prompts = _prompts(body, vocab_size)
    stream_options = body.get("stream_options") or {}
    return _one_per_choice(
        prompts,
        _choices(body, len(prompts)),
        options,
        mode=defaults.mode,
        stream=stream,
        top_logprobs=_top_logprobs(body.get("logprobs"), "logprobs"),
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
        echo=echo,
        generates=generates,
    )


def chat_request(
    body: Any,
    defaults: Settings,
    template_prompt: Callable[[list[dict[str, str]]], tuple[str, tuple[str, ...]]],
) -> list[ParsedRequest]:
    """An OpenAI chat completion request: the messages become the document the model continues
    (`template_prompt`), whose stop strings end the reply."""
    body = _check_fields(body, _CHAT_ACCEPTED | set(_OPENAI_REFUSED))
    if "max_completion_tokens" in body:
        if "max_tokens" in body:
            raise ApiError(400, "give 'max_tokens' or 'max_completion_tokens', not both", param="max_tokens")
        body = {**body, "max_tokens": body["max_completion_tokens"]}
        del body["max_completion_tokens"]
    prompt, template_stops = template_prompt(_messages(body.get("messages")))
    options = _sampling(body, defaults)
    options = options.model_copy(update={"stop": tuple(dict.fromkeys(template_stops + options.stop))})
    wants_logprobs = body.get("logprobs") or False
    if not isinstance(wants_logprobs, bool):
        raise ApiError(400, "'logprobs' must be true or false", param="logprobs")
    top = _top_logprobs(body.get("top_logprobs"), "top_logprobs")
    if top is not None and not wants_logprobs:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    stream_options = body.get("stream_options") or {}
    return _one_per_choice(
        [prompt],
        _choices(body, 1),
        options,
        mode=defaults.mode,
        stream=bool(body.get("stream")),
        top_logprobs=(top or 0) if wants_logprobs else None,
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
    )


_ROLES = ("system", "user", "assistant")


def _messages(messages: Any) -> list[dict[str, str]]:
    """OpenAI's messages as role and text; content may be a string or a list of text parts."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            400, "'messages' must be a non-empty list of {role, content} objects", param="messages"
        )
    checked = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise ApiError(400, f"{where} must have a 'role' of {', '.join(_ROLES)}", param=where)
        content = message.get("content")
        if isinstance(content, list) and all(
            isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            for part in content
        ):
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be text (a string or text parts)", param=where)
        checked.append({"role": message["role"], "content": content})
    if checked[-1]["role"] == "assistant":
        raise ApiError(400, "the last message must be the user's (or the system's): the model replies to it")
    return checked


GENERATE_FIELDS = {"model", "prompt", "stream", "inspect_cache", "top_logprobs", "mode", *DECODING_KEYS}


def generate_request(body: Any, defaults: Settings, vocab_size: int) -> ParsedRequest:
    """A /v1/generate request: gencli's own settings keys, plus inspect_cache and top_logprobs."""
    body = _check_fields(body, GENERATE_FIELDS)
    values = _checked({key: body[key] for key in body if key in DECODING_KEYS or key == "mode"})
    mode = values.pop("mode", defaults.mode)
    inspect = body.get("inspect_cache")
    if inspect not in (None, False, True, "ends", "steps"):
        raise ApiError(400, "'inspect_cache' must be true, false, 'ends' or 'steps'", param="inspect_cache")
    prompts = _prompts(body, vocab_size)
    if len(prompts) != 1:
        raise ApiError(400, "'prompt' must be one prompt: text or a list of token ids", param="prompt")
    return ParsedRequest(
        prompts[0],
        mode,
        defaults.decoding.model_copy(update=values),
        stream=bool(body.get("stream")),
        inspect_cache="ends" if inspect is True else inspect or None,
        top_logprobs=_top_logprobs(body.get("top_logprobs"), "top_logprobs"),
        step_events=bool(body.get("stream")),
    )


def inspection_request(body: Any, vocab_size: int, fields: set[str]) -> dict[str, Any]:
    """/v1/tokenize, /v1/attention, /v1/explain: one prompt (text or token ids) and the integers
    `fields` names (layer, head, position), checked. Indexes are checked against the model later."""
    body = _check_fields(body, {"model", "prompt", *fields})
    prompt = _one_prompt(body.get("prompt"), vocab_size)
    if prompt is None:
        raise ApiError(400, "'prompt' must be a string or a list of token ids", param="prompt")
    checked: dict[str, Any] = {"prompt": prompt}
    for name in fields - {"thumbnails"}:
        value = body.get(name, -1 if name == "position" else 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiError(400, f"'{name}' must be an integer", param=name)
        checked[name] = value
    if "thumbnails" in fields:
        checked["thumbnails"] = bool(body.get("thumbnails", False))
    return checked


def compare_request(
    body: Any, defaults: Settings, vocab_size: int
) -> tuple[str | list[int], DecodingOptions]:
    """/v1/compare: a prompt and gencli's decoding settings, as /v1/generate takes them."""
    body = _check_fields(body, {"model", "prompt", *DECODING_KEYS})
    prompt = _one_prompt(body.get("prompt"), vocab_size)
    if prompt is None:
        raise ApiError(400, "'prompt' must be a string or a list of token ids", param="prompt")
    values = _checked({key: body[key] for key in body if key in DECODING_KEYS})
    return prompt, defaults.decoding.model_copy(update=values)
