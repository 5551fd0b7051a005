"""What passes between the event loop and the worker thread: a checked request, and the job that
carries it there and brings its text, step events and result back."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gencli.results import GenerationResult
from gencli.settings import DecodingOptions


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
    # OpenAI's chat and responses routes without a length: generate up to the end of the context.
    fills_context: bool = False
    include_stop: bool = False  # vLLM's include_stop_str_in_output: the stop string stays in the text
    shaped_by: str | None = None  # the request field that shapes the answer (response_format, ...)


@dataclass
class Job:
    """One request's generation, handed from the event loop to the worker thread."""

    request: ParsedRequest
    loop: asyncio.AbstractEventLoop
    # Text as it is decoded, a token's worth at a time; step events {"logprob": ...} (each just
    # before its token's text), {"cache": ...} and {"speculation": ...} (a verification pass,
    # after its tokens); None ends.
    chunks: asyncio.Queue[str | dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: asyncio.Future[GenerationResult] = field(init=False)

    def __post_init__(self) -> None:
        self.done = self.loop.create_future()

    def send(self, text: str | None) -> None:
        self.loop.call_soon_threadsafe(self.chunks.put_nowait, text)

    def send_step(self, kind: str, record: dict[str, Any]) -> None:
        """A step event: "logprob" (a token's log-probabilities), "cache" (a cache snapshot) or
        "speculation" (a verification pass)."""
        self.loop.call_soon_threadsafe(self.chunks.put_nowait, {kind: record})

    def finish(self, result: GenerationResult | None, problem: Exception | None = None) -> None:
        self.send(None)
        _settle(self.loop, self.done, result, problem)


@dataclass
class Inspection:
    """Work on the model that is not a generation (an attention map, explain, a comparison of the
    modes), run by the worker in queue order like a job."""

    work: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: asyncio.Future[Any] = field(init=False)

    def __post_init__(self) -> None:
        self.done = self.loop.create_future()

    def finish(self, result: Any, problem: Exception | None = None) -> None:
        _settle(self.loop, self.done, result, problem)


def _settle(
    loop: asyncio.AbstractEventLoop, done: asyncio.Future, result: Any, problem: Exception | None
) -> None:
    """Give `done` its result or exception, from the worker thread, unless it already has one."""

    def settle() -> None:
        if done.done():
            return
        if problem is not None:
            done.set_exception(problem)
        else:
            done.set_result(result)

    loop.call_soon_threadsafe(settle)
