"""Consoles for stdout and stderr, JSON output, and the small formats every view shares."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def stdout_console() -> Console:
    return Console(highlight=False)


def json_line(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


def print_json(data: Any) -> None:
    sys.stdout.write(json_line(data))
    sys.stdout.flush()


def format_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"


def token_label(token: str, width: int) -> str:
    """A token as a label of at most `width` characters: spaces as ·, newlines and tabs escaped."""
    label = token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·")
    return label if len(label) <= width else label[: width - 1] + "…"


def verdict(passed: bool) -> str:
    return "[green]PASS[/green]" if passed else "[bold red]FAIL[/bold red]"
