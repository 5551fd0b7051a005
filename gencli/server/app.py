"""The routes: one small handler each over the shared server state (state.py), the worker behind
them; and the access line each request leaves on stderr."""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gencli.loading import LoadedModel
from gencli.results import GenerationResult
from gencli.server import explore
from gencli.server.errors import ApiError
from gencli.server.jobs import Job
from gencli.server.requests import (
    chat_request,
    completion_request,
    fills_context,
    generate_request,
    openai_defaults,
    responses_request,
)
from gencli.server.responses import (
    FINISH_REASONS,
    chat_logprobs,
    completion_text,
    openai_logprobs,
    response_object,
    responses_event,
    scored_steps,
    sse,
    usage,
)
from gencli.server.state import ServerState, note_usage, read_request
from gencli.server.worker import Worker
from gencli.settings import ResolvedSettings
from gencli.stop_strings import StopHoldBack

Steps = list[dict[str, Any]]  # log-probability records, one per token


async def choice_pieces(job: Job) -> AsyncIterator[tuple[str, Steps, GenerationResult | None]]:
    """A choice as it streams: (text, the log-probability records of the tokens it completes,
    None) for each token once its text is whole, stop strings held back and left out (unless the
    request keeps them); then (what is left, its records, the result). ApiError if the run failed."""
    held = StopHoldBack(job.request.options.stop, keep=job.request.include_stop)
    steps: Steps = []  # tokens whose text has not gone out yet
    while (item := await job.chunks.get()) is not None:
        if isinstance(item, dict):
            steps += [item["logprob"]] if "logprob" in item else []
        elif shown := held.feed(item):
            yield shown, steps, None
            steps = []
    result = await job.done
    yield held.rest(result.finish_reason == "stop"), steps, result


# A streamed choice's chunk: (choice index, text, its tokens' records, the result on the last).
Chunk = Callable[[int, str, Steps, GenerationResult | None], dict[str, Any]]


async def streamed_choices(
    jobs: list[Job],
    request: Request,
    chunk: Chunk,
    usage_chunk: Callable[[dict[str, Any]], dict[str, Any]] | None,
) -> AsyncIterator[str]:
    """OpenAI's event stream for completions and chat: a chunk per token (`choice_pieces`), each
    choice's last one with its result; then `usage_chunk(usage)` when asked for, and `[DONE]`.
    Choices stream one after another, as the worker runs them."""
    results = []
    for index, job in enumerate(jobs):
        try:
            async for text, steps, result in choice_pieces(job):
                yield sse(chunk(index, text, steps, result))
        except ApiError as problem:
            yield sse({"error": {"message": problem.message, "type": "server_error"}})
            return
        results.append(result)
    totals = usage(results, jobs[0].request.n)
    note_usage(request, totals["prompt_tokens"], totals["completion_tokens"])
    if usage_chunk is not None:
        yield sse(usage_chunk(totals))
    yield "data: [DONE]\n\n"


def answered(request: Request, body: dict[str, Any], totals: dict[str, Any]) -> Response:
    note_usage(request, totals["prompt_tokens"], totals["completion_tokens"])
    return JSONResponse(body)


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


def model_card(state: ServerState, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": state.created, "owned_by": "gencli"}


async def models(state: ServerState, request: Request) -> Response:
    state.authorize(request)
    return JSONResponse({"object": "list", "data": [model_card(state, name) for name in state.names]})


async def model(state: ServerState, request: Request) -> Response:
    state.authorize(request)
    return JSONResponse(model_card(state, state.served_name(request.path_params["name"])))


async def completions(state: ServerState, request: Request) -> Response:
    body, name = await read_request(state, request)
    parsed = completion_request(body, state.openai, state.settings.mode, state.vocab_size)
    first = parsed[0]
    identity = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": name,
    }
    offsets = [0] * len(parsed)  # where each choice's next token starts in its text

    def choice(index: int, text: str, steps: Steps | None, result: GenerationResult | None) -> dict[str, Any]:
        logprobs = None
        if steps is not None:
            logprobs = openai_logprobs(steps, offsets[index])
            offsets[index] += sum(len(step["text"]) for step in steps)
        return {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": None if result is None else FINISH_REASONS[result.finish_reason],
        }

    def chunk(index: int, text: str, steps: Steps, result: GenerationResult | None) -> dict[str, Any]:
        wanted = steps if parsed[index].top_logprobs is not None else None
        return {**identity, "choices": [choice(index, text, wanted, result)]}

    def usage_chunk(totals: dict[str, Any]) -> dict[str, Any]:
        return {**identity, "choices": [], "usage": totals}

    def stream(jobs: list[Job]) -> AsyncIterator[str]:
        return streamed_choices(jobs, request, chunk, usage_chunk if first.include_usage else None)

    outcome = await state.run(parsed, request, stream if first.stream else None)
    if isinstance(outcome, Response):
        return outcome
    choices = [
        choice(index, completion_text(result, parsed[index]), scored_steps(result, parsed[index]), result)
        for index, result in enumerate(outcome)
    ]
    totals = usage(outcome, first.n)
    return answered(request, {**identity, "choices": choices, "usage": totals}, totals)


async def chat_completions(state: ServerState, request: Request) -> Response:
    body, name = await read_request(state, request)
    parsed = chat_request(body, state.openai, state.settings.mode, state.fills_context, state.chat_prompt)
    first = parsed[0]
    identity = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}

    def chunk(index: int, text: str, steps: Steps, result: GenerationResult | None) -> dict[str, Any]:
        wants_logprobs = parsed[index].top_logprobs is not None
        return {
            **identity,
            "object": "chat.completion.chunk",
            "choices": [
                {
                    "index": index,
                    "delta": {"content": text} if text or result is None else {},
                    "logprobs": chat_logprobs(steps) if wants_logprobs else None,
                    "finish_reason": None if result is None else FINISH_REASONS[result.finish_reason],
                }
            ],
        }

    def usage_chunk(totals: dict[str, Any]) -> dict[str, Any]:
        return {**identity, "object": "chat.completion.chunk", "choices": [], "usage": totals}

    async def stream(jobs: list[Job]) -> AsyncIterator[str]:
        for index in range(len(jobs)):  # each choice opens with the speaker, as OpenAI's do
            opening = chunk(index, "", [], None)
            opening["choices"][0].update(delta={"role": "assistant", "content": ""}, logprobs=None)
            yield sse(opening)
        wanted = usage_chunk if first.include_usage else None
        async for event in streamed_choices(jobs, request, chunk, wanted):
            yield event

    outcome = await state.run(parsed, request, stream if first.stream else None, prompt_field="messages")
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
    totals = usage(outcome, first.n)
    reply = {**identity, "object": "chat.completion", "choices": choices, "usage": totals}
    return answered(request, reply, totals)


async def responses(state: ServerState, request: Request) -> Response:
    """OpenAI's Responses API, stateless: the reply is one message of output text."""
    body, name = await read_request(state, request)
    parsed = responses_request(
        body, state.openai, state.settings.mode, state.fills_context, state.chat_prompt
    )
    identity = {
        "id": f"resp_{uuid.uuid4().hex}",
        "created_at": int(time.time()),
        "model": name,
        "message_id": f"msg_{uuid.uuid4().hex}",
    }

    def finished(result: GenerationResult) -> dict[str, Any]:
        return response_object(identity, body, parsed.options, result, completion_text(result, parsed))

    async def stream(jobs: list[Job]) -> AsyncIterator[str]:
        numbers = itertools.count()

        def event(kind: str, **data: Any) -> str:
            return responses_event(kind, next(numbers), data)

        opened = response_object(identity, body, parsed.options, None, "")
        message, part = opened["output"][0], opened["output"][0]["content"][0]
        where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
        yield event("response.created", response={**opened, "output": []})
        yield event("response.in_progress", response={**opened, "output": []})
        yield event("response.output_item.added", output_index=0, item={**message, "content": []})
        yield event("response.content_part.added", **where, part=part)
        try:
            async for text, _, _ in choice_pieces(jobs[0]):
                if text:
                    yield event("response.output_text.delta", **where, delta=text, logprobs=[])
        except ApiError as problem:
            yield event("error", code="server_error", message=problem.message, param=None)
            return
        closed = finished(jobs[0].done.result())
        message, part = closed["output"][0], closed["output"][0]["content"][0]
        yield event("response.output_text.done", **where, text=part["text"], logprobs=[])
        yield event("response.content_part.done", **where, part=part)
        yield event("response.output_item.done", output_index=0, item=message)
        note_usage(request, closed["usage"]["input_tokens"], closed["usage"]["output_tokens"])
        # Always response.completed, an incomplete response included (its status says so), as
        # vLLM and SGLang end a stream: the openai package's stream helper waits for no other.
        yield event("response.completed", response=closed)

    outcome = await state.run(
        [parsed], request, stream if parsed.stream else None, "max_output_tokens", "input"
    )
    if isinstance(outcome, Response):
        return outcome
    reply = finished(outcome[0])
    note_usage(request, reply["usage"]["input_tokens"], reply["usage"]["output_tokens"])
    return JSONResponse(reply)


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
        note_usage(request, len(result.prompt_token_ids), len(result.token_ids))
        yield sse({"result": result.to_dict()})
        yield "data: [DONE]\n\n"

    outcome = await state.run([parsed], request, stream if parsed.stream else None, "max_new_tokens")
    if isinstance(outcome, Response):
        return outcome
    (result,) = outcome
    note_usage(request, len(result.prompt_token_ids), len(result.token_ids))
    return JSONResponse(result.to_dict())


async def http_error(request: Request, problem: HTTPException) -> Response:
    """Starlette's own refusals (no such route, a method the route lacks) in OpenAI's shape."""
    message = {
        404: f"there is no {request.url.path}; see the README for the routes",
        405: f"{request.url.path} does not take {request.method}",
    }.get(problem.status_code, str(problem.detail))
    return ApiError(problem.status_code, message).response()


class AccessLog:
    """A line per request, as uvicorn and llama-server print one: who asked, the route, the status,
    the tokens (what the handler noted) and the time until the last byte went out."""

    def __init__(self, app: ASGIApp, write: Callable[[str], None]):
        self.app, self.write = app, write

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, ended = time.perf_counter(), 0, False

        async def sending(message: Message) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True

        try:
            await self.app(scope, receive, sending)
        finally:
            self.write(access_line(scope, status, time.perf_counter() - started, ended))


def access_line(scope: Scope, status: int, seconds: float, complete: bool) -> str:
    host, port = scope.get("client") or ("-", 0)
    parts = [f'{host}:{port} "{scope["method"]} {scope["path"]}" {status}']
    tokens = scope.get("state", {}).get("tokens")
    if tokens is not None:
        parts.append(f"{tokens[0]} prompt + {tokens[1]} completion tokens")
    parts.append(f"{seconds:.2f} s" + ("" if complete else " (the client went away)"))
    return " · ".join(parts)


def create_app(
    loaded: LoadedModel,
    resolved: ResolvedSettings,
    *,
    api_key: str | None = None,
    max_queue: int = 512,
    prefix_cache_bytes: int = 512 * 2**20,
    max_body_bytes: int = 2**20,
    served_model_names: tuple[str, ...] = (),
    access_log: Callable[[str], None] | None = None,
) -> Starlette:
    """The server for `loaded`: gencli's routes take `resolved`'s settings, OpenAI's take what the
    user set and OpenAI's defaults for the rest; `access_log` hears a line per request."""
    worker = Worker(loaded, max_queue, prefix_cache_bytes)
    config = None if loaded.folder is None else loaded.folder / "config.json"
    state = ServerState(
        loaded,
        resolved.settings,
        openai_defaults(resolved),
        fills_context(resolved),
        worker,
        served_model_names or (loaded.name,),
        api_key,
        max_body_bytes,
        int(config.stat().st_mtime if config is not None and config.exists() else time.time()),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()

    routes = [
        Route("/", handled(explore.page), methods=["GET"]),
        Route("/explore/{name}", handled(explore.page_asset), methods=["GET"]),
        Route("/health", handled(health), methods=["GET"]),
        Route("/v1/models", handled(models), methods=["GET"]),
        Route("/v1/models/{name:path}", handled(model), methods=["GET"]),
        Route("/v1/completions", handled(completions), methods=["POST"]),
        Route("/v1/chat/completions", handled(chat_completions), methods=["POST"]),
        Route("/v1/responses", handled(responses), methods=["POST"]),
        Route("/v1/generate", handled(generate), methods=["POST"]),
        Route("/v1/tokenize", handled(explore.tokenize), methods=["POST"]),
        Route("/v1/attention", handled(explore.attention), methods=["POST"]),
        Route("/v1/explain", handled(explore.explain), methods=["POST"]),
        Route("/v1/compare", handled(explore.compare), methods=["POST"]),
    ]
    middleware = [] if access_log is None else [Middleware(AccessLog, write=access_log)]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    app.state.server = state
    return app
