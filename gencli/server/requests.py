"""What a request asks for, checked: OpenAI's completions, chat completions and responses, and
gencli's own /v1/generate, each turned into one `ParsedRequest` per choice. Every error names the
request's field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gencli.server.errors import ApiError
from gencli.server.jobs import ParsedRequest
from gencli.settings import (
    DECODING_KEYS,
    DecodingOptions,
    ResolvedSettings,
    SettingError,
    Settings,
    check_values,
)

# The sampling fields of OpenAI's API and vLLM's extra ones, and the gencli setting each one sets.
_FIELD_TO_SETTING = {
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "logit_bias": "logit_bias",
    # vLLM's extra fields, which its clients send in extra_body
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "min_tokens": "min_new_tokens",
    "stop_token_ids": "stop_token_ids",
    "ignore_eos": "ignore_eos",
    "skip_special_tokens": "skip_special_tokens",
    "no_repeat_ngram_size": "no_repeat_ngram_size",  # gencli's own
    "speculate": "speculate",  # gencli's own; the draft model is the server's (serve --draft-model)
    "speculative_tokens": "speculative_tokens",
}
# A request may not name a model for the server to load: the draft is chosen when it starts.
_REQUEST_KEYS = tuple(key for key in DECODING_KEYS if key != "draft_model")
_OPENAI_ACCEPTED = {
    "model",
    "stream",
    "stream_options",
    "user",
    "n",
    "include_stop_str_in_output",
    "response_format",
    "structured_outputs",
}
_COMPLETION_ACCEPTED = {*_OPENAI_ACCEPTED, *_FIELD_TO_SETTING, "prompt", "logprobs", "echo"}
_CHAT_ACCEPTED = {
    *_OPENAI_ACCEPTED,
    *_FIELD_TO_SETTING,
    "messages",
    "logprobs",
    "top_logprobs",
    "max_completion_tokens",
}
# Fields gencli cannot honour, with the value that asks for nothing and why it is refused otherwise.
_OPENAI_REFUSED = {
    "best_of": (1, "gencli returns the n choices it generates; use n"),
    "suffix": (None, "insertion is not implemented"),
}
MAX_CHOICES = 16  # prompts x n in one request; each choice is decoded on its own

# OpenAI's default for each setting whose gencli default differs: sampling (at temperature 1),
# no repetition penalty or n-gram rule, and 16 tokens for a completion (a chat reply or a response
# fills the context instead).
_OPENAI_DEFAULTS = {
    "sample": True,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "max_new_tokens": 16,
}


def openai_defaults(resolved: ResolvedSettings) -> DecodingOptions:
    """What OpenAI's routes take for a field a request leaves out: what the user set (serve's flags,
    -o, config files, GENCLI_* variables, the checkpoint's generation_config.json), else OpenAI's
    default; the CLI's own preset (repetition penalty, n-gram rule) stays with the CLI."""
    unset = {key: value for key, value in _OPENAI_DEFAULTS.items() if resolved.origins[key] == "default"}
    return resolved.settings.decoding.model_copy(update=unset)


def fills_context(resolved: ResolvedSettings) -> bool:
    """Whether a chat reply or a response without a length runs to the end of the context, as
    OpenAI's do: unless the user gave the server a length."""
    return resolved.origins["max_new_tokens"] == "default"


def _check_fields(body: Any, accepted: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if "draft_model" in body:
        raise ApiError(
            400,
            "'draft_model' is the server's: start it with gencli serve --draft-model MODEL, and ask "
            "for 'speculate': 'draft'",
            param="draft_model",
        )
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


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name) or False
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false", param=name)
    return value


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


def _sampling(body: dict[str, Any], defaults: DecodingOptions, length: str = "max_tokens") -> DecodingOptions:
    """The request's sampling fields on top of `defaults`, its length in the field `length`; errors
    name the request's field."""
    for name, (neutral, why) in _OPENAI_REFUSED.items():
        if body.get(name) not in (None, neutral):
            raise ApiError(400, f"'{name}' = {body[name]!r} is not supported: {why}", param=name)
    fields = {key: setting for key, setting in _FIELD_TO_SETTING.items() if key != "max_tokens"}
    fields[length] = "max_new_tokens"
    values = {setting: body[key] for key, setting in fields.items() if body.get(key) is not None}
    if values.get("top_k") == -1:  # vLLM's spelling of "every token"
        values["top_k"] = 0
    if "temperature" in values:  # OpenAI samples at any temperature above 0
        values["sample"] = values["temperature"] != 0
    named = {setting: key for key, setting in fields.items()}
    return defaults.model_copy(update=_checked(values, lambda key: named.get(key, key)))


# vLLM's structured_outputs keys, and the setting each sets.
_STRUCTURED_OUTPUTS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar"}


def _shape(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The answer's shape a request asks for, as settings, and the field that asked: OpenAI's
    `response_format` (json_object, json_schema) or vLLM's `structured_outputs` (json, regex,
    choice, grammar)."""
    response_format, structured = body.get("response_format"), body.get("structured_outputs")
    field = "structured_outputs"
    if response_format is not None and structured is not None:
        raise ApiError(400, "give response_format or structured_outputs, not both", param=field)
    if response_format is not None:
        return _checked_shape(_response_format(response_format, "response_format"), "response_format")
    if structured is None:
        return {}, None
    if not isinstance(structured, dict) or len(structured) != 1 or set(structured) - set(_STRUCTURED_OUTPUTS):
        kinds = ", ".join(_STRUCTURED_OUTPUTS)
        raise ApiError(400, f"'{field}' must be an object with one of {kinds}", param=field)
    ((key, value),) = structured.items()
    if key == "choice" and not (isinstance(value, list) and value):
        raise ApiError(400, f"'{field}.choice' must be a non-empty list of strings", param=field)
    return _checked_shape({_STRUCTURED_OUTPUTS[key]: value}, field)


def _response_format(value: Any, name: str) -> dict[str, Any]:
    """OpenAI's {"type": "text" | "json_object" | "json_schema", ...}: chat's and completions'
    `response_format`, the Responses API's `text.format` (its schema beside `type`)."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = value.get("json_schema", value)  # chat nests the schema; the Responses API does not
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            return {"json_schema": spec["schema"]}
        raise ApiError(400, f"'{name}' of type json_schema needs its schema as an object", param=name)
    raise ApiError(400, f"'{name}' must have a 'type' of text, json_object or json_schema", param=name)


def _checked_shape(values: dict[str, Any], field: str) -> tuple[dict[str, Any], str | None]:
    return (_checked(values, lambda key: field), field) if values else ({}, None)


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


def _stream_usage(body: dict[str, Any]) -> bool:
    stream_options = body.get("stream_options") or {}
    return bool(isinstance(stream_options, dict) and stream_options.get("include_usage"))


def completion_request(
    body: Any, defaults: DecodingOptions, mode: str, vocab_size: int
) -> list[ParsedRequest]:
    """An OpenAI completion request, one ParsedRequest per choice; fields left out take `defaults`.
    `max_tokens: 0` with `echo` scores the prompt and generates nothing."""
    body = _check_fields(body, _COMPLETION_ACCEPTED | set(_OPENAI_REFUSED))
    echo = _flag(body, "echo")
    generates = body.get("max_tokens") != 0
    if not generates and not echo:
        raise ApiError(400, "'max_tokens' = 0 generates nothing: it needs 'echo': true", param="max_tokens")
    stream = bool(body.get("stream"))
    if echo and stream:
        raise ApiError(400, "'echo' with 'stream' is not supported: ask without stream", param="echo")
    options = _sampling(
        {key: value for key, value in body.items() if generates or key != "max_tokens"}, defaults
    )
    shape, shaped_by = _shape(body)
    options = options.model_copy(update=shape)
    prompts = _prompts(body, vocab_size)
    return _one_per_choice(
        prompts,
        _choices(body, len(prompts)),
        options,
        mode=mode,
        stream=stream,
        top_logprobs=_top_logprobs(body.get("logprobs"), "logprobs"),
        include_usage=_stream_usage(body),
        echo=echo,
        generates=generates,
        include_stop=_flag(body, "include_stop_str_in_output"),
        shaped_by=shaped_by,
    )


TemplatePrompt = Callable[[list[dict[str, str]]], tuple[str, tuple[str, ...]]]


def chat_request(
    body: Any, defaults: DecodingOptions, mode: str, fills_context: bool, template_prompt: TemplatePrompt
) -> list[ParsedRequest]:
    """An OpenAI chat completion request: the messages become the document the model continues
    (`template_prompt`), whose stop strings end the reply. Without a length, and with
    `fills_context`, the reply may run to the end of the context."""
    body = _check_fields(body, _CHAT_ACCEPTED | set(_OPENAI_REFUSED))
    length = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if length != "max_tokens" and "max_tokens" in body:
        raise ApiError(400, "give 'max_tokens' or 'max_completion_tokens', not both", param="max_tokens")
    prompt, template_stops = template_prompt(_messages(body.get("messages"), "messages"))
    options = _sampling(body, defaults, length)
    shape, shaped_by = _shape(body)
    stops = tuple(dict.fromkeys(template_stops + options.stop))
    options = options.model_copy(update={**shape, "stop": stops})
    wants_logprobs = _flag(body, "logprobs")
    top = _top_logprobs(body.get("top_logprobs"), "top_logprobs")
    if top is not None and not wants_logprobs:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return _one_per_choice(
        [prompt],
        _choices(body, 1),
        options,
        mode=mode,
        stream=bool(body.get("stream")),
        top_logprobs=(top or 0) if wants_logprobs else None,
        include_usage=_stream_usage(body),
        fills_context=fills_context and body.get(length) is None,
        include_stop=_flag(body, "include_stop_str_in_output"),
        shaped_by=shaped_by,
    )


# The Responses API's fields: what gencli reads, and those it takes only with the value that asks
# for nothing (a stateless server with no tools). Sampling fields as in chat, but the length.
_RESPONSES_ACCEPTED = {
    *(set(_FIELD_TO_SETTING) - {"max_tokens"}),
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "stream",
    "user",
    "metadata",
    "include_stop_str_in_output",
    "text",
}
_RESPONSES_NEUTRAL: dict[str, tuple[tuple[Any, ...], str]] = {
    "store": (
        (None, False),
        "this server keeps no responses: send 'store': false, and the conversation as 'input'",
    ),
    "previous_response_id": (
        (None,),
        "this server keeps no responses to continue from: send the conversation so far as 'input'",
    ),
    "tools": ((None, []), "gencli's models do not call tools"),
    "tool_choice": ((None, "auto", "none"), "gencli's models do not call tools"),
    "parallel_tool_calls": ((None, True, False), "gencli's models do not call tools"),
    "truncation": ((None, "disabled"), "a conversation past the context is refused, never truncated"),
    "reasoning": ((None, {}), "gencli's models do not reason apart from their answer"),
    "include": ((None, []), "there is nothing more to include"),
}


def responses_request(
    body: Any, defaults: DecodingOptions, mode: str, fills_context: bool, template_prompt: TemplatePrompt
) -> ParsedRequest:
    """An OpenAI Responses API request: `instructions` and `input` (text, or messages) become the
    document the model continues, as in chat. Stateless: nothing is stored to continue from."""
    body = _check_fields(body, _RESPONSES_ACCEPTED | set(_RESPONSES_NEUTRAL))
    for name, (neutral, why) in _RESPONSES_NEUTRAL.items():
        if body.get(name) not in neutral:
            raise ApiError(400, f"'{name}' = {body[name]!r} is not supported: {why}", param=name)
    given = body.get("input")
    if isinstance(given, str):
        if not given.strip():
            raise ApiError(400, "'input' is empty; send text or a list of messages", param="input")
        messages = [{"role": "user", "content": given}]
    else:
        messages = _messages(given, "input")
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ApiError(400, "'instructions' must be text", param="instructions")
        messages = [{"role": "system", "content": instructions}, *messages]
    prompt, template_stops = template_prompt(messages)
    options = _sampling(body, defaults, "max_output_tokens")
    shape, shaped_by = _text_format(body.get("text"))
    stops = tuple(dict.fromkeys(template_stops + options.stop))
    options = options.model_copy(update={**shape, "stop": stops})
    return ParsedRequest(
        prompt,
        mode,
        options,
        stream=bool(body.get("stream")),
        fills_context=fills_context and body.get("max_output_tokens") is None,
        include_stop=_flag(body, "include_stop_str_in_output"),
        shaped_by=shaped_by,
    )


def _text_format(text: Any) -> tuple[dict[str, Any], str | None]:
    """The Responses API's `text`: {"format": {"type": ..., "schema": ...}} shapes the answer."""
    if text is None or text == {}:
        return {}, None
    if not isinstance(text, dict) or set(text) - {"format", "verbosity"} or "format" not in text:
        raise ApiError(400, "'text' must be an object with a 'format'", param="text")
    return _checked_shape(_response_format(text["format"], "text.format"), "text")


# OpenAI's roles; `developer` is what newer clients send for `system`.
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Text parts of a message's content: chat's, and the Responses API's input and output text.
_TEXT_PARTS = ("text", "input_text", "output_text")


def _messages(messages: Any, name: str) -> list[dict[str, str]]:
    """OpenAI's messages (the list in `name`) as role and text; content may be a string or a list
    of text parts."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, f"'{name}' must be a non-empty list of {{role, content}} objects", param=name)
    checked = []
    for index, message in enumerate(messages):
        where = f"{name}[{index}]"
        if not isinstance(message, dict) or message.get("type", "message") != "message":
            raise ApiError(400, f"{where} must be a message: {{role, content}}", param=where)
        if message.get("role") not in _ROLES:
            raise ApiError(400, f"{where} must have a 'role' of {', '.join(_ROLES)}", param=where)
        content = message.get("content")
        if isinstance(content, list) and all(
            isinstance(part, dict) and part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str)
            for part in content
        ):
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be text (a string or text parts)", param=where)
        checked.append({"role": _ROLES[message["role"]], "content": content})
    if checked[-1]["role"] == "assistant":
        raise ApiError(
            400, "the last message must be the user's (or the system's): the model replies to it", param=name
        )
    return checked


GENERATE_FIELDS = {"model", "prompt", "stream", "inspect_cache", "top_logprobs", "mode", *_REQUEST_KEYS}


def generate_request(body: Any, defaults: Settings, vocab_size: int) -> ParsedRequest:
    """A /v1/generate request: gencli's own settings keys, plus inspect_cache and top_logprobs."""
    body = _check_fields(body, GENERATE_FIELDS)
    values = _checked({key: body[key] for key in body if key in _REQUEST_KEYS or key == "mode"})
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
    body = _check_fields(body, {"model", "prompt", *_REQUEST_KEYS})
    prompt = _one_prompt(body.get("prompt"), vocab_size)
    if prompt is None:
        raise ApiError(400, "'prompt' must be a string or a list of token ids", param="prompt")
    values = _checked({key: body[key] for key in body if key in _REQUEST_KEYS})
    return prompt, defaults.decoding.model_copy(update=values)
