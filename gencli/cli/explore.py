"""`gencli explore`: the model generating in a browser page, with its token probabilities, attention
and KV cache, served by `gencli serve`'s app on a loopback port."""

from __future__ import annotations

import urllib.parse
import webbrowser
from typing import Annotated, Any

import typer

from gencli.cli.edge import load_with_settings, notice, startup_status
from gencli.cli.options import DTYPE, MODEL, SOURCES, command_line_layers, with_options
from gencli.cli.serve import listen, require_server_extra, run_until_stopped, url


@with_options(MODEL, DTYPE, SOURCES)
def explore(
    prompt: Annotated[str | None, typer.Argument(help="Text to start the page's prompt box with.")] = None,
    port: Annotated[
        int, typer.Option(help="Loopback port to serve the page on; 0 takes a free one.", min=0, max=65535)
    ] = 0,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the page's address without opening a browser.")
    ] = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Watch the model generate in your browser: tokens coloured by probability (hover one for its
    alternatives), attention per layer and head, the step-by-step walk of `gencli explain` for a
    clicked token, the KV cache filling, and the four modes side by side. The page works offline;
    its data comes from the same routes `gencli serve` offers scripts. Ctrl-C stops."""
    require_server_extra()
    from gencli.server.app import create_app

    layers = command_line_layers(flags)
    listener = listen("127.0.0.1", port)
    with startup_status("starting") as step:
        loaded, resolved = load_with_settings(layers, step)
    app = create_app(loaded, resolved)
    address = url(listener) + "/" + (f"?{urllib.parse.urlencode({'prompt': prompt})}" if prompt else "")
    notice(f"exploring {loaded.name} at {address} — Ctrl-C stops")
    if not no_browser and not webbrowser.open(address):
        notice("no browser could be opened: open the address above in one")
    run_until_stopped(app, listener)
