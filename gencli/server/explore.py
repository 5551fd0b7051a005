"""The explore page (`/`) and the inspection routes behind it, which scripts can call too:
/v1/tokenize, /v1/attention, /v1/explain and /v1/compare. Each returns what the CLI's `--json`
prints for the same input (`gencli tokenize`, `attention`, `explain`, `compare`); the model work
runs on the worker thread, in queue order with the generations."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gencli.compare import compare_modes
from gencli.scratch.explain import explain as walk
from gencli.scratch.probe import attention_map
from gencli.server.jobs import Inspection
from gencli.server.requests import compare_request, inspection_request
from gencli.server.state import ServerState, read_request
from gencli.tokens import pieces
from gencli.tokens import tokenize as tokenize_text

PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "explore.js": "text/javascript; charset=utf-8",
    "explore.css": "text/css; charset=utf-8",
}


def page_file(name: str) -> Response:
    text = resources.files("gencli").joinpath("page", name).read_text(encoding="utf-8")
    return Response(text, media_type=PAGE_FILES[name], headers={"Cache-Control": "no-cache"})


async def page(state: ServerState, request: Request) -> Response:
    return page_file("index.html")


async def page_asset(state: ServerState, request: Request) -> Response:
    name = request.path_params["name"]
    if name not in PAGE_FILES or name == "index.html":
        return Response(status_code=404)
    return page_file(name)


async def inspect(state: ServerState, work: Callable[[], Any]) -> Any:
    """Run `work` on the worker thread, after what is queued before it."""
    job = Inspection(work, asyncio.get_running_loop())
    state.worker.submit([job])
    return await job.done


async def tokenize(state: ServerState, request: Request) -> Response:
    """What `gencli tokenize --json` prints: the model's name, the count and each token's id, text,
    bytes and label."""
    body, model = await read_request(state, request)
    prompt = inspection_request(body, state.vocab_size, set())["prompt"]
    tokenizer = state.prompt_checker.tokenizer
    found = pieces(tokenizer, prompt) if isinstance(prompt, list) else tokenize_text(tokenizer, prompt)
    return JSONResponse({"model": model, "count": len(found), "tokens": [piece.to_dict() for piece in found]})


async def attention(state: ServerState, request: Request) -> Response:
    body, _ = await read_request(state, request)
    asked = inspection_request(body, state.vocab_size, {"layer", "head", "thumbnails"})
    loaded = state.loaded
    amap = await inspect(
        state,
        lambda: attention_map(loaded, asked["prompt"], asked["layer"], asked["head"], asked["thumbnails"]),
    )
    return JSONResponse(amap.to_dict())


async def explain(state: ServerState, request: Request) -> Response:
    body, _ = await read_request(state, request)
    asked = inspection_request(body, state.vocab_size, {"layer", "head", "position"})
    loaded = state.loaded
    explained = await inspect(
        state, lambda: walk(loaded, asked["prompt"], asked["layer"], asked["head"], asked["position"])
    )
    return JSONResponse(explained.to_dict())


async def compare(state: ServerState, request: Request) -> Response:
    body, _ = await read_request(state, request)
    prompt, options = compare_request(body, state.settings, state.vocab_size)
    loaded = state.loaded
    comparison = await inspect(state, lambda: compare_modes(loaded, prompt, options))
    return JSONResponse(comparison.to_dict())
