"""The routes: one small handler each over the shared server state, the worker behind them."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gencli.chat import chat_prompt
from gencli.errors import GencliError
from gencli.generation import ContextOverflowError, encode_prompt
from gencli.loading import LoadedModel
from gencli.results import GenerationResult
from gencli.server.errors import ApiError
from gencli.server.requests import chat_request, completion_request, generate_request
from gencli.server.responses import (
    FINISH_REASONS,
    chat_logprobs,
    completion_text,
    openai_logprobs,
    scored_steps,
    sse,
    usage,
)
from gencli.server.worker import Job, ParsedRequest, Worker
from gencli.settings import Settings
from gencli.stop_strings import StopHoldBack


@dataclass
class ServerState:
    """What every handler shares: the model, the server's settings (the defaults of every request),
    the worker that runs the model, the names it answers to, and the limits."""

    loaded: LoadedModel
    settings: Settings
    worker: Worker
    names: tuple[str, ...]
    api_key: str | None
    max_body_bytes: int
    # The worker thread owns the tokenizer; the event loop checks prompts with a copy of its own,
    # because a fast tokenizer may not be used from two threads at once.
    prompt_checker: LoadedModel = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_checker = dataclasses.replace(self.loaded, tokenizer=copy.deepcopy(self.loaded.tokenizer))

    @property
    def vocab_size(self) -> int:
        return self.loaded.model.config.vocab_size

    def chat_prompt(self, messages: list[dict[str, str]]) -> tuple[str, tuple[str, ...]]:
        return chat_prompt(self.prompt_checker.tokenizer, messages)

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {self.api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(
                401, "a valid API key is required: send 'Authorization: Bearer KEY'", code="invalid_api_key"
            )

    def served_name(self, body: Any) -> str:
        """The name a request may give the model: one of those this server answers to."""
        asked = body.get("model") if isinstance(body, dict) else None
        if asked is None:
            return self.names[0]
        if asked not in self.names:
            served = ", ".join(repr(name) for name in self.names)
            raise ApiError(
                404, f"this server runs {served}, not {asked!r}", param="model", code="model_not_found"
            )
        return asked

    async def read_json(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise ApiError(413, f"the request body is over {self.max_body_bytes} bytes")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > self.max_body_bytes:
                raise ApiError(413, f"the request body is over {self.max_body_bytes} bytes")
        try:
            return json.loads(body)
        except ValueError as problem:
            raise ApiError(400, f"the request body is not valid JSON: {problem}") from None

    async def run(
        self,
        parsed: list[ParsedRequest],
        request: Request,
        stream: Callable[[list[Job]], AsyncIterator[str]] | None,
        tokens_field: str = "max_tokens",
    ) -> Response | list[GenerationResult]:
        """Queue a job per choice; their results, or a streaming response of `stream(jobs)`'s events."""
        for choice in parsed:  # refused before it is queued: a streaming client gets its 400 too
            try:
                encode_prompt(
                    self.prompt_checker,
                    choice.prompt,
                    choice.options.max_new_tokens if choice.generates else 0,
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
        self.worker.submit(jobs)
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


async def wait(job: Job, request: Request) -> GenerationResult:
    """The job's result; a client that goes away meanwhile cancels it."""
    while True:
        finished, _ = await asyncio.wait({job.done}, timeout=0.25)
        if finished:
            return job.done.result()
        if await request.is_disconnected():
            job.cancelled.set()


async def streamed_choices(
    jobs: list[Job],
    chunk: Callable[[int, str, GenerationResult | None], dict[str, Any]],
    usage_chunk: Callable[[dict[str, Any]], dict[str, Any]] | None,
) -> AsyncIterator[str]:
    """OpenAI's event stream: each choice's text as it comes, stop strings held back and left out,
    its last chunk with its result; then `usage_chunk(usage)` when asked for, and `[DONE]`. Choices
    stream one after another, as the worker runs them."""
    results = []
    for index, job in enumerate(jobs):
        held = StopHoldBack(job.request.options.stop)
        while (text := await job.chunks.get()) is not None:
            if shown := held.feed(text):
                yield sse(chunk(index, shown, None))
        try:
            result = await job.done
        except ApiError as problem:
            yield sse({"error": {"message": problem.message, "type": "server_error"}})
            return
        results.append(result)
        yield sse(chunk(index, held.rest(result.finish_reason == "stop"), result))
    if usage_chunk is not None:
        yield sse(usage_chunk(usage(results, jobs[0].request.n)))
    yield "data: [DONE]\n\n"


async def read_request(state: ServerState, request: Request) -> tuple[Any, str]:
    """A generating route's start: the key checked, the body read, the model name it gives checked;
    (body, the name the response carries)."""
    state.authorize(request)
    body = await state.read_json(request)
    return body, state.served_name(body)


Handler = Callable[[ServerState, Request], Awaitable[Response]]


def handled(endpoint: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The route for a handler: the shared state in, a refusal out as OpenAI's error object."""

    async def route(request: Request) -> Response:
        try:
            return await endpoint(request.app.state.server, request)
        except ApiError as problem:
            headers = {"Retry-After": "1"} if problem.status == 503 else None
            return problem.response(headers)

    return route


async def health(state: ServerState, request: Request) -> Response:
    config = state.loaded.model.config
    shape = {"layers": config.n_layer, "heads": config.n_head, "context": state.loaded.context_length}
    return JSONResponse({"status": "ok", "model": state.names[0], **shape})


async def models(state: ServerState, request: Request) -> Response:
    state.authorize(request)
    listed = [{"id": name, "object": "model", "created": 0, "owned_by": "gencli"} for name in state.names]
    return JSONResponse({"object": "list", "data": listed})


async def completions(state: ServerState, request: Request) -> Response:
    body, model = await read_request(state, request)
    parsed = completion_request(body, state.settings, state.vocab_size)
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

    def usage_chunk(totals: dict[str, Any]) -> dict[str, Any]:
        return {**identity, "choices": [], "usage": totals}

    def stream(jobs: list[Job]) -> AsyncIterator[str]:
        def chunk(index: int, text: str, result: GenerationResult | None) -> dict[str, Any]:
            return {**identity, "choices": [choice(index, text, result)]}

        return streamed_choices(jobs, chunk, usage_chunk if first.include_usage else None)

    outcome = await state.run(parsed, request, stream if first.stream else None)
    if isinstance(outcome, Response):
        return outcome
    choices = [
        choice(index, completion_text(result, parsed[index]), result) for index, result in enumerate(outcome)
    ]
    return JSONResponse({**identity, "choices": choices, "usage": usage(outcome, first.n)})


async def chat_completions(state: ServerState, request: Request) -> Response:
    body, model = await read_request(state, request)
    parsed = chat_request(body, state.settings, state.chat_prompt)
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

    def usage_chunk(totals: dict[str, Any]) -> dict[str, Any]:
        return {**identity, "object": "chat.completion.chunk", "choices": [], "usage": totals}

    async def stream(jobs: list[Job]) -> AsyncIterator[str]:
        for index in range(len(jobs)):  # each choice opens with the speaker, as OpenAI's do
            opening = delta_chunk(index, "", None)
            opening["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            yield sse(opening)
        async for event in streamed_choices(jobs, delta_chunk, usage_chunk if first.include_usage else None):
            yield event

    outcome = await state.run(parsed, request, stream if first.stream else None)
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


async def generate(state: ServerState, request: Request) -> Response:
    body, _ = await read_request(state, request)
    parsed = generate_request(body, state.settings, state.vocab_size)

    async def stream(jobs: list[Job]) -> AsyncIterator[str]:
        (job,) = jobs
        while (item := await job.chunks.get()) is not None:
            yield sse({"text": item} if isinstance(item, str) else item)
        try:
            result = await job.done
        except ApiError as problem:
            yield sse({"error": {"message": problem.message, "status": problem.status}})
            return
        yield sse({"result": result.to_dict()})
        yield "data: [DONE]\n\n"

    outcome = await state.run([parsed], request, stream if parsed.stream else None, "max_new_tokens")
    return outcome if isinstance(outcome, Response) else JSONResponse(outcome[0].to_dict())


async def http_error(request: Request, problem: HTTPException) -> Response:
    """Starlette's own refusals (no such route, a method the route lacks) in OpenAI's shape."""
    message = {
        404: f"there is no {request.url.path}; see the README for the routes",
        405: f"{request.url.path} does not take {request.method}",
    }.get(problem.status_code, str(problem.detail))
    return ApiError(problem.status_code, message).response()


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
    state = ServerState(
        loaded, settings, worker, served_model_names or (loaded.name,), api_key, max_body_bytes
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()

    from gencli.server import explore  # its handlers build on this module's ServerState

    routes = [
        Route("/", handled(explore.page), methods=["GET"]),
        Route("/explore/{name}", handled(explore.page_asset), methods=["GET"]),
        Route("/health", handled(health), methods=["GET"]),
        Route("/v1/models", handled(models), methods=["GET"]),
        Route("/v1/completions", handled(completions), methods=["POST"]),
        Route("/v1/chat/completions", handled(chat_completions), methods=["POST"]),
        Route("/v1/generate", handled(generate), methods=["POST"]),
        Route("/v1/tokenize", handled(explore.tokenize), methods=["POST"]),
        Route("/v1/attention", handled(explore.attention), methods=["POST"]),
        Route("/v1/explain", handled(explore.explain), methods=["POST"]),
        Route("/v1/compare", handled(explore.compare), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.server = state
    return app
