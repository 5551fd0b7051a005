"""`gencli logs`: the runs gencli has recorded (opt out with --no-log or GENCLI_LOG=0)."""

from __future__ import annotations

from typing import Annotated

import typer

from gencli.cli.options import JsonOption


def logs(
    count: Annotated[
        int, typer.Option("--count", "-n", help="How many recent runs; 0 shows all.", min=0)
    ] = 3,
    as_json: JsonOption = False,
    path: Annotated[bool, typer.Option("--path", help="Print the history file's location and exit.")] = False,
) -> None:
    """Show the most recent runs: when, model, mode, prompt and reply, oldest first."""
    from gencli import history
    from gencli.render.console import print_json, stdout_console
    from gencli.render.settings import print_history

    if path:
        typer.echo(str(history.history_path()))
        return
    runs = history.read_last(count or None)
    if as_json:
        print_json(runs)
    else:
        print_history(runs, stdout_console())
