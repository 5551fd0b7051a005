"""`gencli serve`: one loaded model behind HTTP, speaking OpenAI's completions API and gencli's own.

Starlette on uvicorn: every request body is checked by gencli's settings schema, so FastAPI's
per-endpoint pydantic models would be a second schema; Starlette (which FastAPI is built on)
gives the routing, the streaming and nothing to keep in step.

One worker thread runs the model. Requests wait in a bounded queue (full: 503 with Retry-After)
and run one at a time, so no state is shared between them. The worker keeps the KV caches of
recent prompts (`PrefixPool`): a request takes the cache that shares the longest prefix with its
prompt and prefills only the rest, as vLLM's automatic prefix caching does, and the response says
how many prompt tokens were reused (`usage.prompt_tokens_details.cached_tokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hmac
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gencli.chat import chat_prompt
from gencli.errors import GencliError
from gencli.generation import ContextOverflowError, encode_prompt, generate_text
from gencli.loading import LoadedModel
from gencli.prefix import CachedPrefix, common_prefix_length
from gencli.results import GenerationResult
from gencli.scoring import prompt_logprobs, score_prompt
from gencli.settings import DECODING_KEYS, DecodingOptions, SettingError, Settings, check_values
from gencli.stop_strings import StopHoldBack, without_stop


class ApiError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI-style error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error", 503: "server_busy"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


class PrefixPool:
    """The KV caches of recent prompts for one mode, at most `entries` of them (each sized for the
    whole context). A prompt takes the one sharing its longest prefix, or a fresh or least
    recently used one, and leaves its own tokens in it."""

    def __init__(self, new_cache: Callable[[], Any], entries: int):
        self.new_cache = new_cache
        self.entries = entries
        self.caches: list[CachedPrefix] = []  # least recently used first

    def take(self, prompt_ids: list[int]) -> CachedPrefix:
        shared = [common_prefix_length(cached.token_ids, prompt_ids) for cached in self.caches]
        best = max(range(len(shared)), key=lambda index: (shared[index], index), default=None)
        if best is not None and shared[best] > 0:
            chosen = self.caches.pop(best)
        elif len(self.caches) < self.entries:
            chosen = CachedPrefix(self.new_cache())
        else:
            chosen = self.caches.pop(0)
        self.caches.append(chosen)
        return chosen


def cache_entry_bytes(loaded: LoadedModel) -> int:
    """What one cache for the whole context takes: keys and values, every layer and position."""
    config = loaded.model.config
    return 2 * config.n_layer * config.n_embd * loaded.context_length * loaded.model.dtype.itemsize


@dataclass(frozen=True)
class ParsedRequest:
    """A request's generation, checked: what the worker runs."""

    prompt: str | list[int]
    mode: str
    options: DecodingOptions
    stream: bool = False
    inspect_cache: str | None = None
    top_logprobs: int | None = None
    include_usage: bool = False  # OpenAI's stream_options.include_usage
    echo: bool = False  # OpenAI's echo: the prompt comes back before the completion, scored with logprobs
    generates: bool = True  # False for max_tokens 0 with echo: the prompt is scored, nothing generated
    n: int = 1  # choices per prompt in the request this choice belongs to


@dataclass
class Job:
    """One request's generation, handed from the event loop to the worker thread."""

    request: ParsedRequest
    loop: asyncio.AbstractEventLoop
    chunks: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: asyncio.Future[GenerationResult] = field(init=False)

    def __post_init__(self) -> None:
        self.done = self.loop.create_future()

    def send(self, text: str | None) -> None:
        self.loop.call_soon_threadsafe(self.chunks.put_nowait, text)

    def finish(self, result: GenerationResult | None, problem: Exception | None = None) -> None:
        def settle() -> None:
            if self.done.done():
                return
            if problem is not None:
                self.done.set_exception(problem)
            else:
                self.done.set_result(result)

        self.send(None)
        self.loop.call_soon_threadsafe(settle)


class Worker:
    """The one thread that touches the model. Requests wait in a queue of at most `max_queue`;
    one whose client has gone away gives its place up at once."""

    def __init__(self, loaded: LoadedModel, max_queue: int, prefix_cache_bytes: int):
        self.loaded = loaded
        self.max_queue = max_queue
        self.waiting: deque[Job | None] = deque()
        self.ready = threading.Condition()
        self.entries = max(1, prefix_cache_bytes // cache_entry_bytes(loaded))
        self.pools: dict[str, PrefixPool] = {}
        self.thread = threading.Thread(target=self._run, name="gencli-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.ready:
            self.waiting.append(None)
            self.ready.notify()

    def submit(self, jobs: list[Job]) -> None:
        """Queue a request's jobs (one per choice), all or none."""
        with self.ready:
            left = [queued for queued in self.waiting if queued is not None and queued.cancelled.is_set()]
            for gone in left:
                self.waiting.remove(gone)
                gone.finish(None, ApiError(499, "the client went away"))
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise ApiError(503, "the server is busy: its queue is full; retry shortly", code="queue_full")
            self.waiting.extend(jobs)
            self.ready.notify()

    def _next(self) -> Job | None:
        with self.ready:
            while not self.waiting:
                self.ready.wait()
            return self.waiting.popleft()

    def _pool(self, mode: str) -> PrefixPool | None:
        engine = self.loaded.engine(mode)
        if not engine.uses_cache:
            return None
        if mode not in self.pools:
            context = self.loaded.context_length
            self.pools[mode] = PrefixPool(lambda: engine.new_cache(context), self.entries)
        return self.pools[mode]

    def _run(self) -> None:
        while (job := self._next()) is not None:
            if job.cancelled.is_set():
                job.finish(None, ApiError(499, "the client went away"))
                continue
            prefix = None
            try:
                request = job.request
                if request.generates:
                    prompt_ids = encode_prompt(self.loaded, request.prompt, request.options.max_new_tokens)
                    pool = self._pool(request.mode)
                    prefix = pool.take(prompt_ids) if pool is not None else None
                    result = generate_text(
                        self.loaded,
                        request.prompt,
                        request.mode,
                        request.options,
                        on_text=job.send,
                        inspect_cache=request.inspect_cache,
                        prefix=prefix,
                        cancelled=job.cancelled.is_set,
                        top_logprobs=request.top_logprobs,
                    )
                else:
                    result = score_prompt(
                        self.loaded, request.prompt, request.mode, request.top_logprobs or 0
                    )
                if request.echo and request.top_logprobs is not None and result.prompt_logprobs is None:
                    result.prompt_logprobs = prompt_logprobs(
                        self.loaded, result.prompt_token_ids, request.top_logprobs
                    )
            except GencliError as problem:
                job.finish(None, ApiError(400, str(problem)))
            except Exception as problem:  # a fault in one request must not take the server down
                if prefix is not None:
                    prefix.resync()
                job.finish(None, ApiError(500, f"generation failed: {type(problem).__name__}: {problem}"))
            else:
                job.finish(result)


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
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "interrupted": "length"}


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
    )


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


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(
    loaded: LoadedModel,
    settings: Settings,
    *,
    api_key: str | None = None,
    max_queue: int = 16,
    prefix_cache_bytes: int = 512 * 2**20,
    max_body_bytes: int = 2**20,
    served_model_names: tuple[str, ...] = (),
) -> Starlette:
    worker = Worker(loaded, max_queue, prefix_cache_bytes)
    vocab_size = loaded.model.config.vocab_size
    # The worker thread owns the tokenizer; the event loop checks prompts with a copy of its own,
    # because a fast tokenizer may not be used from two threads at once.
    prompt_checker = dataclasses.replace(loaded, tokenizer=copy.deepcopy(loaded.tokenizer))
    names = served_model_names or (loaded.name,)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(
                401, "a valid API key is required: send 'Authorization: Bearer KEY'", code="invalid_api_key"
            )

    def served_name(body: Any) -> str:
        """The name a request may give the model: one of those this server answers to."""
        asked = body.get("model") if isinstance(body, dict) else None
        if asked is None:
            return names[0]
        if asked not in names:
            served = ", ".join(repr(name) for name in names)
            raise ApiError(
                404, f"this server runs {served}, not {asked!r}", param="model", code="model_not_found"
            )
        return asked

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise ApiError(413, f"the request body is over {max_body_bytes} bytes")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > max_body_bytes:
                raise ApiError(413, f"the request body is over {max_body_bytes} bytes")
        try:
            return json.loads(body)
        except ValueError as problem:
            raise ApiError(400, f"the request body is not valid JSON: {problem}") from None

    async def wait(job: Job, request: Request) -> GenerationResult:
        """The job's result; a client that goes away meanwhile cancels it."""
        while True:
            finished, _ = await asyncio.wait({job.done}, timeout=0.25)
            if finished:
                return job.done.result()
            if await request.is_disconnected():
                job.cancelled.set()

    async def run(
        parsed: list[ParsedRequest],
        request: Request,
        stream: Callable[[list[Job]], AsyncIterator[str]] | None,
        tokens_field: str = "max_tokens",
    ) -> Response | list[GenerationResult]:
        """Queue a job per choice; their results, or a streaming response of `stream(jobs)`'s events."""
        for choice in parsed:  # refused before it is queued: a streaming client gets its 400 too
            try:
                encode_prompt(
                    prompt_checker, choice.prompt, choice.options.max_new_tokens if choice.generates else 0
                )
            except ContextOverflowError as problem:
                worded = ContextOverflowError(
                    problem.prompt_tokens, problem.max_new_tokens, problem.context, name=tokens_field
                )
                raise ApiError(400, str(worded), param=tokens_field) from None
            except GencliError as problem:
                raise ApiError(400, str(problem), param="prompt") from None
        loop = asyncio.get_running_loop()
        jobs = [Job(choice, loop) for choice in parsed]
        worker.submit(jobs)
        if stream is None:
            return [await wait(job, request) for job in jobs]

        async def events() -> AsyncIterator[str]:
            try:
                async for event in stream(jobs):
                    yield event
            finally:  # done, or the client went away: either way the worker may stop
                for job in jobs:
                    job.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def streamed_choices(
        jobs: list[Job], chunk: Callable[[int, str, GenerationResult | None], dict[str, Any]]
    ) -> AsyncIterator[tuple[str, GenerationResult | None]]:
        """Each choice's text as it comes, stop strings held back and left out (OpenAI's way); after a
        choice's last piece, its result. Choices stream one after another, as the worker runs them."""
        for index, job in enumerate(jobs):
            held = StopHoldBack(job.request.options.stop)
            while (text := await job.chunks.get()) is not None:
                if shown := held.feed(text):
                    yield _sse(chunk(index, shown, None)), None
            try:
                result = await job.done
            except ApiError as problem:
                yield _sse({"error": {"message": problem.message, "type": "server_error"}}), None
                return
            yield _sse(chunk(index, held.rest(result.finish_reason == "stop"), result)), result

    def handled(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def wrapper(request: Request) -> Response:
            try:
                return await endpoint(request)
            except ApiError as problem:
                headers = {"Retry-After": "1"} if problem.status == 503 else None
                return problem.response(headers)

        return wrapper

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": names[0]})

    async def models(request: Request) -> Response:
        authorize(request)
        listed = [{"id": name, "object": "model", "created": 0, "owned_by": "gencli"} for name in names]
        return JSONResponse({"object": "list", "data": listed})

    async def completions(request: Request) -> Response:
        authorize(request)
        body = await read_json(request)
        model = served_name(body)
        parsed = completion_request(body, settings, vocab_size)
        first = parsed[0]
        identity = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
        }

        def choice(index: int, text: str, result: GenerationResult | None) -> dict[str, Any]:
            steps = None if result is None else scored_steps(result, parsed[index])
            return {
                "index": index,
                "text": text,
                "logprobs": None if steps is None else openai_logprobs(steps),
                "finish_reason": None if result is None else FINISH_REASONS[result.finish_reason],
            }

        async def stream(jobs: list[Job]) -> AsyncIterator[str]:
            results = []
            async for event, result in streamed_choices(
                jobs, lambda *c: {**identity, "choices": [choice(*c)]}
            ):
                yield event
                if result is not None:
                    results.append(result)
            if len(results) == len(jobs):
                if first.include_usage:
                    yield _sse({**identity, "choices": [], "usage": usage(results, first.n)})
                yield "data: [DONE]\n\n"

        outcome = await run(parsed, request, stream if first.stream else None)
        if isinstance(outcome, Response):
            return outcome
        choices = [
            choice(index, completion_text(result, parsed[index]), result)
            for index, result in enumerate(outcome)
        ]
        return JSONResponse({**identity, "choices": choices, "usage": usage(outcome, first.n)})

    def template_prompt(messages: list[dict[str, str]]) -> tuple[str, tuple[str, ...]]:
        return chat_prompt(prompt_checker.tokenizer, messages)

    async def chat_completions(request: Request) -> Response:
        authorize(request)
        body = await read_json(request)
        model = served_name(body)
        parsed = chat_request(body, settings, template_prompt)
        first = parsed[0]
        identity = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}

        def delta_chunk(index: int, text: str, result: GenerationResult | None) -> dict[str, Any]:
            steps = None if result is None else scored_steps(result, parsed[index])
            return {
                **identity,
                "object": "chat.completion.chunk",
                "choices": [
                    {
                        "index": index,
                        "delta": {"content": text} if text or result is None else {},
                        "logprobs": None if steps is None else chat_logprobs(steps),
                        "finish_reason": None if result is None else FINISH_REASONS[result.finish_reason],
                    }
                ],
            }

        async def stream(jobs: list[Job]) -> AsyncIterator[str]:
            for index in range(len(jobs)):  # each choice opens with the speaker, as OpenAI's do
                opening = delta_chunk(index, "", None)
                opening["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield _sse(opening)
            results = []
            async for event, result in streamed_choices(jobs, delta_chunk):
                yield event
                if result is not None:
                    results.append(result)
            if len(results) == len(jobs):
                if first.include_usage:
                    chunk = {**identity, "object": "chat.completion.chunk", "choices": []}
                    yield _sse({**chunk, "usage": usage(results, first.n)})
                yield "data: [DONE]\n\n"

        outcome = await run(parsed, request, stream if first.stream else None)
        if isinstance(outcome, Response):
            return outcome
        choices = []
        for index, result in enumerate(outcome):
            steps = scored_steps(result, parsed[index])
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": completion_text(result, parsed[index])},
                    "logprobs": None if steps is None else chat_logprobs(steps),
                    "finish_reason": FINISH_REASONS[result.finish_reason],
                }
            )
        return JSONResponse(
            {**identity, "object": "chat.completion", "choices": choices, "usage": usage(outcome, first.n)}
        )

    async def generate(request: Request) -> Response:
        authorize(request)
        body = await read_json(request)
        served_name(body)
        parsed = generate_request(body, settings, vocab_size)

        async def stream(jobs: list[Job]) -> AsyncIterator[str]:
            (job,) = jobs
            while (text := await job.chunks.get()) is not None:
                yield _sse({"text": text})
            try:
                result = await job.done
            except ApiError as problem:
                yield _sse({"error": {"message": problem.message, "status": problem.status}})
                return
            yield _sse({"result": result.to_dict()})
            yield "data: [DONE]\n\n"

        outcome = await run([parsed], request, stream if parsed.stream else None, "max_new_tokens")
        return outcome if isinstance(outcome, Response) else JSONResponse(outcome[0].to_dict())

    async def http_error(request: Request, problem: HTTPException) -> Response:
        """Starlette's own refusals (no such route, a method the route lacks) in OpenAI's shape."""
        message = {
            404: f"there is no {request.url.path}; see the README for the routes",
            405: f"{request.url.path} does not take {request.method}",
        }.get(problem.status_code, str(problem.detail))
        return ApiError(problem.status_code, message).response()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()

    routes = [
        Route("/health", handled(health), methods=["GET"]),
        Route("/v1/models", handled(models), methods=["GET"]),
        Route("/v1/completions", handled(completions), methods=["POST"]),
        Route("/v1/chat/completions", handled(chat_completions), methods=["POST"]),
        Route("/v1/generate", handled(generate), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
