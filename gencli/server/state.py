"""What every route shares: the model, the defaults each kind of request takes, the worker, and the
steps every generating route starts with (the key, the body, the model's name, the prompts checked
and queued). The routes of app.py and explore.py build on it; it imports neither."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hmac
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gencli.chat import chat_prompt
from gencli.constraints import ConstraintError
from gencli.errors import GencliError
from gencli.generation import (
    ContextOverflowError,
    TokenIdOutOfVocabularyError,
    encode_prompt,
    prepare_options,
)
from gencli.loading import LoadedModel
from gencli.results import GenerationResult
from gencli.server.errors import ApiError
from gencli.server.jobs import Job, ParsedRequest
from gencli.server.worker import Worker
from gencli.settings import DecodingOptions, Settings


@dataclass
class ServerState:
    """What every handler shares: the model, the defaults of each kind of request, the worker that
    runs the model, the names it answers to, and the limits."""

    loaded: LoadedModel
    settings: Settings  # gencli's own routes (/v1/generate, /v1/compare): the CLI's settings
    openai: DecodingOptions  # OpenAI's routes: what the user set, OpenAI's defaults for the rest
    # Whether a chat or responses request without a length generates up to the end of the context
    # (OpenAI's default), or takes the length the user gave the server.
    fills_context: bool
    worker: Worker
    names: tuple[str, ...]
    api_key: str | None
    max_body_bytes: int
    created: int  # when the model was made, as /v1/models reports it (Unix time)
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

    def served_name(self, asked: Any) -> str:
        """The name a request may give the model: one of those this server answers to."""
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

    def checked(self, choice: ParsedRequest, tokens_field: str, prompt_field: str) -> ParsedRequest:
        """`choice` refused with a 400 before it is queued (a streaming client gets its 400 too) when
        its prompt does not fit or a setting names a token the model lacks; with `fills_context`,
        given the length that fills the context."""
        options = choice.options
        try:
            prepare_options(self.prompt_checker, options)
            new_tokens = options.max_new_tokens if choice.generates and not choice.fills_context else 0
            prompt_ids = encode_prompt(self.prompt_checker, choice.prompt, new_tokens)
        except ContextOverflowError as problem:
            # Past the context by the prompt alone, the prompt is at fault whatever the length.
            param = prompt_field if problem.prompt_tokens >= problem.context else tokens_field
            raise ApiError(400, str(problem.worded(tokens_field)), param=param) from None
        except TokenIdOutOfVocabularyError as problem:
            raise ApiError(400, str(problem), param=problem.key) from None
        except ConstraintError as problem:
            raise ApiError(400, str(problem), param=choice.shaped_by or problem.key) from None
        except GencliError as problem:
            raise ApiError(400, str(problem), param=prompt_field) from None
        if not choice.fills_context:
            return choice
        room = self.loaded.context_length - len(prompt_ids)
        if room < 1:
            raise ApiError(
                400,
                f"the {prompt_field} take {len(prompt_ids)} tokens, the whole of the model's context of "
                f"{self.loaded.context_length}: there is no room for a reply; shorten them",
                param=prompt_field,
            )
        return dataclasses.replace(choice, options=options.model_copy(update={"max_new_tokens": room}))

    async def run(
        self,
        parsed: list[ParsedRequest],
        request: Request,
        stream: Callable[[list[Job]], AsyncIterator[str]] | None,
        tokens_field: str = "max_tokens",
        prompt_field: str = "prompt",
    ) -> Response | list[GenerationResult]:
        """Queue a job per choice; their results, or a streaming response of `stream(jobs)`'s events.
        Errors name the request's fields: `tokens_field` for the length, `prompt_field` for the
        prompt."""
        checked = [self.checked(choice, tokens_field, prompt_field) for choice in parsed]
        loop = asyncio.get_running_loop()
        jobs = [Job(choice, loop) for choice in checked]
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


async def read_request(state: ServerState, request: Request) -> tuple[Any, str]:
    """A route's start: the key checked, the body read, the model name it gives checked;
    (body, the name the response carries)."""
    state.authorize(request)
    body = await state.read_json(request)
    return body, state.served_name(body.get("model") if isinstance(body, dict) else None)


def note_usage(request: Request, prompt_tokens: int, completion_tokens: int) -> None:
    """What the access line reports for this request: its tokens (set when they are known, at the
    end of a stream too)."""
    request.state.tokens = (prompt_tokens, completion_tokens)
