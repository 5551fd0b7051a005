"""`gencli serve`: keep the model loaded and answer HTTP requests (OpenAI's completions API too)."""

from __future__ import annotations

import ipaddress
import signal
import socket
from typing import Annotated, Any

import typer

from gencli.cli.edge import load_with_settings, notice, startup_status
from gencli.cli.options import (
    DECODING,
    DTYPE,
    MODE,
    MODEL,
    SOURCES,
    ServerApiKeyOption,
    command_line_layers,
    with_options,
)
from gencli.errors import GencliError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@with_options(MODE, DECODING, MODEL, DTYPE, SOURCES)
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on; loopback unless you say otherwise.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    api_key: ServerApiKeyOption = None,
    max_queue: Annotated[
        int,
        typer.Option(
            help="Choices that may wait for the model (each of a request's n counts); more get 503 "
            "with Retry-After.",
            min=1,
        ),
    ] = 512,
    prefix_cache_mb: Annotated[
        int,
        typer.Option(
            help="Memory for recent prompts' KV caches, reused by later prompts that start the same way.",
            min=1,
        ),
    ] = 512,
    max_body_kb: Annotated[
        int, typer.Option(help="Largest request body accepted (413 above).", min=1)
    ] = 1024,
    served_model_name: Annotated[
        list[str] | None,
        typer.Option(
            "--served-model-name",
            help="A name requests may give the model, as /v1/models lists it (repeatable; a response "
            "carries its request's name, or the first). Default: the --model as given.",
            metavar="NAME",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No access line per request on stderr.")
    ] = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Keep the model warm behind HTTP: POST /v1/completions, /v1/chat/completions and
    /v1/responses (OpenAI's API: any OpenAI client works, scoring with echo and logprobs included),
    POST /v1/generate (gencli's own settings in, the generate --json record out), GET /v1/models
    and GET /health; the explore page at / (see gencli explore) and its routes POST /v1/tokenize,
    /v1/attention, /v1/explain and /v1/compare. Requests in kv-cache mode (the default) and
    scratch mode are decoded together as they come (continuous batching).

    What a request leaves out takes the settings you give here (flags, -o, config files, GENCLI_*
    variables), then the checkpoint's generation_config.json; after those, OpenAI's routes take
    OpenAI's defaults (sampling at temperature 1, top_p 1, no penalties, 16 tokens for a
    completion, up to the end of the context for a chat reply or a response), and /v1/generate
    gencli's own (greedy, repetition penalty 1.2, no repeated 3-gram, 64 tokens). temperature 0 is
    the argmax after only the processors asked for. A line per request goes to stderr (-q: none).
    Ctrl-C or SIGTERM stops it."""
    require_server_extra()
    from gencli.server.app import create_app

    layers = command_line_layers(flags)
    listener = listen(host, port)
    with startup_status("starting") as step:
        loaded, resolved = load_with_settings(layers, step)
        step(f"building the {resolved.settings.mode} engine")
        loaded.engine(resolved.settings.mode)
    app = create_app(
        loaded,
        resolved,
        api_key=api_key or None,
        max_queue=max_queue,
        prefix_cache_bytes=prefix_cache_mb * 2**20,
        max_body_bytes=max_body_kb * 1024,
        served_model_names=tuple(dict.fromkeys(served_model_name or ())),
        access_log=None if quiet else notice,
    )
    if not _is_loopback(host) and not api_key:
        notice(f"warning: listening on {host} without --api-key: anyone who can reach it can use the model")
    served = ", ".join(served_model_name or [loaded.name])
    notice(
        f"serving {served} ({resolved.settings.mode}) at {url(listener)}/v1 — the explore page at "
        f"{url(listener)}/ — Ctrl-C stops"
    )
    run_until_stopped(app, listener)


def require_server_extra() -> None:
    """A one-line install hint where the server's extra (uvicorn, starlette) is missing."""
    try:
        import uvicorn  # noqa: F401

        import gencli.server.app  # noqa: F401
    except ImportError:
        raise GencliError("gencli serve needs its extra: pip install 'gencli[serve]'") from None


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (0: a free port), before the model loads: a taken port is one
    line, and the server later takes this very socket, so no other process can take it between."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as problem:
        listener.close()
        message = f"cannot listen on {host}:{port}: {problem.strerror}; pick another --port"
        raise GencliError(message) from None
    return listener


def url(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_until_stopped(app: Any, listener: socket.socket) -> None:
    """Serve `app` on `listener` until Ctrl-C or SIGTERM."""
    import uvicorn

    # uvicorn shuts down gracefully on SIGINT or SIGTERM, then raises the signal again for the
    # handler it found: that one ends the command, which has done what was asked of it.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, _stopped)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[listener])


def _stopped(signal_number: int, frame: object) -> None:
    notice("stopped")
    raise typer.Exit(0)
