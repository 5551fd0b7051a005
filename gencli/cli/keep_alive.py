"""`--keep-alive DURATION`: a call goes through a warm gencli for its model (gencli.keep_alive);
`gencli ps` lists the warm ones and `gencli stop` ends them. Its `main()` is the warm process
itself: it runs each caller's command line with this CLI."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gencli.cli import edge
from gencli.cli.edge import notice, startup_status
from gencli.cli.options import JsonOption, command_line_layers
from gencli.errors import GencliError
from gencli.keep_alive import (
    STOP,
    KeepAliveError,
    WarmProcess,
    WarmServer,
    ask,
    describe_caller,
    run_through,
    start_command,
    warm_processes,
)
from gencli.render.words import plural
from gencli.settings import Settings, duration_seconds, resolve

# In the warm process: the server that runs the calls (None elsewhere).
_SERVER: WarmServer | None = None


class _NotThisProcess(Exception):
    """The call in the warm process is not its to run: the caller runs it, or another one."""


def load_settings(settings: Settings) -> dict[str, Any]:
    """What makes one warm process differ from another: the model (a folder by its absolute
    path) and how it is loaded."""
    model = settings.model
    if Path(model).is_dir():
        model = str(Path(model).resolve())
    return {
        "model": model,
        "device": settings.device,
        "dtype": settings.dtype,
        "quantize": settings.quantize,
        "kernels": settings.kernels,
        "fallback": settings.fallback,
    }


def through_warm_process(flags: dict[str, Any], stays_here: bool = False) -> None:
    """The start of every command that loads a model. With keep_alive set (and unless the command
    `stays_here`), run this whole command line in the warm process for its model and load
    settings, starting one if none is warm, and exit with its status; otherwise return, and the
    command runs here. In the warm process itself: return if the call is this process's to run
    (it then keeps the call's keep-alive), else decline it."""
    settings = resolve(command_line_layers(flags)).settings
    seconds = duration_seconds(settings.keep_alive)
    if _SERVER is not None:
        ours = WarmProcess.for_settings(load_settings(settings), _SERVER.process.folder)
        if stays_here or not seconds or ours.key != _SERVER.process.key:
            raise _NotThisProcess
        _SERVER.keep_alive_s = seconds
        return
    if stays_here or not seconds:
        return
    load = load_settings(settings)
    process = WarmProcess.for_settings(load)
    arguments = json.dumps(
        {
            "folder": str(process.folder),
            "key": process.key,
            "keep_alive_s": seconds,
            "about": {**load, "started": int(time.time())},
        }
    )
    code = run_through(
        process,
        describe_caller(edge.invocation()),
        start=lambda: start_command(process, [arguments]),
        waiting=lambda: startup_status(f"starting a warm gencli for {settings.model}"),
    )
    raise typer.Exit(code)


def run_call(argv: list[str]) -> int | None:
    """One call in the warm process: the command line run by this CLI, as a cold process runs
    it; None when it is not this process's to run."""
    from gencli.cli import app

    edge.new_call()
    try:
        app(args=argv, prog_name="gencli")
    except SystemExit as exited:
        return exited.code if isinstance(exited.code, int) else 0 if exited.code is None else 1
    except _NotThisProcess:
        return None
    return 0


def serve_calls(arguments: dict[str, Any]) -> None:
    global _SERVER
    edge.keep_models_loaded()
    process = WarmProcess(Path(arguments["folder"]), arguments["key"])
    _SERVER = WarmServer(
        process, arguments["keep_alive_s"], run_call, arguments["about"], edge.interrupt_call
    )
    _SERVER.serve()


def ps(as_json: JsonOption = False) -> None:
    """List the warm models (--keep-alive): model, load settings, memory, idle time, when each
    expires."""
    from gencli.render.console import print_json, stdout_console
    from gencli.render.keep_alive import print_warm

    states = [state for process in warm_processes() if (state := ask_state(process)) is not None]
    if as_json:
        print_json(states)
    else:
        print_warm(states, stdout_console())


def ask_state(process: WarmProcess) -> dict[str, Any] | None:
    from gencli.keep_alive import STATUS

    return ask(process, STATUS)


def stop(
    model: Annotated[
        str | None, typer.Argument(help="The model whose warm gencli to end (as gencli ps shows it).")
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="End every warm gencli.")] = False,
) -> None:
    """End the warm gencli of MODEL, or --all of them; a call it is running is interrupted."""
    if (model is None) == (not every):
        raise GencliError("name a MODEL to stop, or --all (gencli ps lists them)")
    wanted = None if every else (str(Path(model).resolve()) if Path(model).is_dir() else model)
    stopped = 0
    for process in warm_processes():
        state = ask_state(process)
        if state is not None and (wanted is None or state["model"] == wanted):
            ask(process, STOP)
            stopped += 1
    if stopped == 0 and wanted is not None:
        raise GencliError(f"no warm gencli holds {model}; gencli ps lists them")
    notice(f"stopped {plural(stopped, 'warm model')}")


def main() -> None:
    from gencli.threads import choose_wait_policy

    signal.signal(signal.SIGINT, signal.default_int_handler)
    choose_wait_policy(os.environ)
    edge.handle_sigterm()
    try:
        serve_calls(json.loads(sys.argv[1]))
    except KeepAliveError as problem:
        edge.error(str(problem))
        sys.exit(2)
