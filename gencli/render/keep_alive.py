"""`gencli ps`: the warm models, a row each."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gencli.render.console import human_bytes
from gencli.render.models import UNWRAPPED


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def print_warm(states: list[dict[str, Any]], console: Console) -> None:
    """A row per warm process; off a terminal nothing wraps, so a model's path stays whole."""
    if not console.is_terminal:
        console = Console(file=console.file, width=UNWRAPPED, highlight=False)
    if not states:
        console.print("No warm models (--keep-alive DURATION keeps one).")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("MODEL", "LOAD SETTINGS", "MEMORY", "IDLE", "EXPIRES IN", "PID"):
        table.add_column(column, overflow="fold")
    for state in states:
        settings = f"{state['device']} · {state['dtype']} · quantize {state['quantize']}"
        table.add_row(
            escape(state["model"]),
            settings,
            "-" if state["memory_bytes"] is None else human_bytes(state["memory_bytes"]),
            "busy" if state["busy"] else _duration(state["idle_s"]),
            "stopping" if state["stopping"] else _duration(state["expires_in_s"]),
            str(state["pid"]),
        )
    console.print(table)
