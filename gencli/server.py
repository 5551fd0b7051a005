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
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gencli.errors import GencliError
from gencli.generation import encode_prompt, generate_text
from gencli.loading import LoadedModel
from gencli.prefix import CachedPrefix, common_prefix_length
from gencli.results import GenerationResult
from gencli.settings import DECODING_KEYS, DecodingOptions, SettingError, Settings, check_values


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

    def submit(self, job: Job) -> None:
        with self.ready:
            left = [queued for queued in self.waiting if queued is not None and queued.cancelled.is_set()]
            for gone in left:
                self.waiting.remove(gone)
                gone.finish(None, ApiError(499, "the client went away"))
            if len(self.waiting) >= self.max_queue:
                raise ApiError(503, "the server is busy: its queue is full; retry shortly", code="queue_full")
            self.waiting.append(job)
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
            except GencliError as problem:
                job.finish(None, ApiError(400, str(problem)))
            except Exception as problem:  # a fault in one request must not take the server down
                if prefix is not None:
                    prefix.resync()
                job.finish(None, ApiError(500, f"generation failed: {type(problem).__name__}: {problem}"))
            else:
                job.finish(result)


# OpenAI's completion fields, and what gencli does with each.
_OPENAI_TO_GENCLI = {
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
}
_GENCLI_TO_OPENAI = {value: key for key, value in _OPENAI_TO_GENCLI.items()}
_OPENAI_ACCEPTED = {"model", "prompt", "stream", "stream_options", "user", "logprobs", *_OPENAI_TO_GENCLI}
# Fields gencli cannot honour, with the value that asks for nothing and why it is refused otherwise.
_OPENAI_REFUSED = {
    "n": (1, "gencli returns one completion per request"),
    "best_of": (1, "gencli returns one completion per request"),
    "echo": (False, "echoing the prompt is not implemented"),
    "presence_penalty": (0, "use gencli's repetition_penalty through /v1/generate"),
    "frequency_penalty": (0, "use gencli's repetition_penalty through /v1/generate"),
    "logit_bias": ({}, "logit bias is not implemented"),
    "suffix": (None, "insertion is not implemented"),
}
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


def _prompt(body: dict[str, Any], vocab_size: int) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # OpenAI's batch form, with a batch of one
    if isinstance(prompt, str):
        return prompt
    token_ids = isinstance(prompt, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt
    )
    if token_ids and prompt:
        if not all(0 <= token < vocab_size for token in prompt):
            raise ApiError(400, f"prompt token ids must be in [0, {vocab_size})", param="prompt")
        return prompt
    raise ApiError(
        400, "'prompt' must be a string or a non-empty list of token ids (one prompt)", param="prompt"
    )


def _top_logprobs(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 20:
        raise ApiError(400, f"'{name}' must be an integer from 0 to 20", param=name)
    return value


def completion_request(body: Any, defaults: Settings, vocab_size: int) -> ParsedRequest:
    """An OpenAI completion request; fields left out take the server's settings."""
    body = _check_fields(body, _OPENAI_ACCEPTED | set(_OPENAI_REFUSED))
    for name, (neutral, why) in _OPENAI_REFUSED.items():
        if body.get(name) not in (None, neutral):
            raise ApiError(400, f"'{name}' = {body[name]!r} is not supported: {why}", param=name)
    values = {_OPENAI_TO_GENCLI[key]: body[key] for key in _OPENAI_TO_GENCLI if body.get(key) is not None}
    if "temperature" in values:  # OpenAI samples at any temperature above 0
        values["sample"] = values["temperature"] != 0
    options = defaults.decoding.model_copy(
        update=_checked(values, lambda key: _GENCLI_TO_OPENAI.get(key, key))
    )
    stream_options = body.get("stream_options") or {}
    logprobs = _top_logprobs(body.get("logprobs"), "logprobs")
    if logprobs is not None and body.get("stream"):
        raise ApiError(400, "'logprobs' with 'stream' is not supported: ask without stream", param="logprobs")
    return ParsedRequest(
        _prompt(body, vocab_size),
        defaults.mode,
        options,
        stream=bool(body.get("stream")),
        top_logprobs=logprobs,
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
    )


GENERATE_FIELDS = {"model", "prompt", "stream", "inspect_cache", "top_logprobs", "mode", *DECODING_KEYS}


def generate_request(body: Any, defaults: Settings, vocab_size: int) -> ParsedRequest:
    """A /v1/generate request: gencli's own settings keys, plus inspect_cache and top_logprobs."""
    body = _check_fields(body, GENERATE_FIELDS)
    values = _checked({key: body[key] for key in body if key in DECODING_KEYS or key == "mode"})
    mode = values.pop("mode", defaults.mode)
    inspect = body.get("inspect_cache")
    if inspect not in (None, False, True, "ends", "steps"):
        raise ApiError(400, "'inspect_cache' must be true, false, 'ends' or 'steps'", param="inspect_cache")
    return ParsedRequest(
        _prompt(body, vocab_size),
        mode,
        defaults.decoding.model_copy(update=values),
        stream=bool(body.get("stream")),
        inspect_cache="ends" if inspect is True else inspect or None,
        top_logprobs=_top_logprobs(body.get("top_logprobs"), "top_logprobs"),
    )


def openai_logprobs(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """gencli's per-token log-probabilities in the completions API's shape."""
    offsets, offset = [], 0
    for step in steps:
        offsets.append(offset)
        offset += len(step["text"])
    return {
        "tokens": [step["text"] for step in steps],
        "token_logprobs": [step["logprob"] for step in steps],
        "top_logprobs": [{other["text"]: other["logprob"] for other in step["top"]} for step in steps],
        "text_offset": offsets,
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
) -> Starlette:
    worker = Worker(loaded, max_queue, prefix_cache_bytes)
    vocab_size = loaded.model.config.vocab_size
    # The worker thread owns the tokenizer; the event loop checks prompts with a copy of its own,
    # because a fast tokenizer may not be used from two threads at once.
    prompt_checker = dataclasses.replace(loaded, tokenizer=copy.deepcopy(loaded.tokenizer))

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(
                401, "a valid API key is required: send 'Authorization: Bearer KEY'", code="invalid_api_key"
            )

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
        job: Job, request: Request, stream: Callable[[Job], AsyncIterator[str]] | None
    ) -> Response | GenerationResult:
        """Queue the job; its result, or a streaming response of `stream(job)`'s events."""
        try:  # refused before it is queued: a streaming client gets its 400 too
            encode_prompt(prompt_checker, job.request.prompt, job.request.options.max_new_tokens)
        except GencliError as problem:
            raise ApiError(400, str(problem), param="prompt") from None
        worker.submit(job)
        if stream is None:
            return await wait(job, request)

        async def events() -> AsyncIterator[str]:
            try:
                async for event in stream(job):
                    yield event
            finally:  # done, or the client went away: either way the worker may stop
                job.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    def handled(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def wrapper(request: Request) -> Response:
            try:
                return await endpoint(request)
            except ApiError as problem:
                headers = {"Retry-After": "1"} if problem.status == 503 else None
                return problem.response(headers)

        return wrapper

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": loaded.name})

    async def models(request: Request) -> Response:
        authorize(request)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": loaded.name, "object": "model", "created": 0, "owned_by": "gencli"}],
            }
        )

    def check_model(body: Any) -> None:
        """A request may name the model; it must be the one this server runs."""
        if isinstance(body, dict) and body.get("model") not in (None, loaded.name):
            raise ApiError(
                404,
                f"this server runs {loaded.name!r}, not {body['model']!r}",
                param="model",
                code="model_not_found",
            )

    async def completions(request: Request) -> Response:
        authorize(request)
        body = await read_json(request)
        check_model(body)
        parsed = completion_request(body, settings, vocab_size)
        job = Job(parsed, asyncio.get_running_loop())
        identity = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": loaded.name,
        }

        def usage(result: GenerationResult) -> dict[str, Any]:
            prompt_tokens, completion_tokens = len(result.prompt_token_ids), len(result.token_ids)
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": result.prompt_cache_tokens},
            }

        def choice(text: str, finish: str | None, result: GenerationResult | None = None) -> dict[str, Any]:
            logprobs = None if result is None or result.logprobs is None else openai_logprobs(result.logprobs)
            return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}

        async def stream(job: Job) -> AsyncIterator[str]:
            while (text := await job.chunks.get()) is not None:
                yield _sse({**identity, "choices": [choice(text, None)]})
            try:
                result = await job.done
            except ApiError as problem:
                yield _sse({"error": {"message": problem.message, "type": "server_error"}})
                return
            yield _sse({**identity, "choices": [choice("", FINISH_REASONS[result.finish_reason])]})
            if parsed.include_usage:
                yield _sse({**identity, "choices": [], "usage": usage(result)})
            yield "data: [DONE]\n\n"

        outcome = await run(job, request, stream if parsed.stream else None)
        if isinstance(outcome, Response):
            return outcome
        return JSONResponse(
            {
                **identity,
                "choices": [choice(outcome.text, FINISH_REASONS[outcome.finish_reason], outcome)],
                "usage": usage(outcome),
            }
        )

    async def generate(request: Request) -> Response:
        authorize(request)
        body = await read_json(request)
        check_model(body)
        parsed = generate_request(body, settings, vocab_size)
        job = Job(parsed, asyncio.get_running_loop())

        async def stream(job: Job) -> AsyncIterator[str]:
            while (text := await job.chunks.get()) is not None:
                yield _sse({"text": text})
            try:
                result = await job.done
            except ApiError as problem:
                yield _sse({"error": {"message": problem.message, "status": problem.status}})
                return
            yield _sse({"result": result.to_dict()})
            yield "data: [DONE]\n\n"

        outcome = await run(job, request, stream if parsed.stream else None)
        return outcome if isinstance(outcome, Response) else JSONResponse(outcome.to_dict())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()

    routes = [
        Route("/health", handled(health), methods=["GET"]),
        Route("/v1/models", handled(models), methods=["GET"]),
        Route("/v1/completions", handled(completions), methods=["POST"]),
        Route("/v1/generate", handled(generate), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
