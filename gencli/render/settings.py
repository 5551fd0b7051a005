"""`gencli config show` and `gencli logs`: settings with their sources, and past runs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gencli.render.words import plural

if TYPE_CHECKING:
    from gencli.settings import ResolvedSettings


def print_settings(resolved: ResolvedSettings, console: Console) -> None:
    table = Table(title="Effective settings", title_justify="left")
    for column in ("key", "value", "source"):
        table.add_column(column, overflow="fold")
    for key, value in resolved.settings.model_dump(mode="json").items():
        table.add_row(key, escape(json.dumps(value, ensure_ascii=False)), escape(resolved.origins[key]))
    console.print(table)
    if resolved.ignored_checkpoint_keys:
        ignored = ", ".join(resolved.ignored_checkpoint_keys)
        console.print(f"Ignored from the checkpoint (not the same in every mode): {ignored}")


def print_history(runs: list[dict[str, Any]], console: Console) -> None:
    if not runs:
        console.print("No runs recorded yet.")
        return
    for run in runs:
        count = len(run.get("token_ids") or [])
        console.print(
            f"[bold]{run.get('time', '?')}[/bold]  {escape(str(run.get('model')))} · {run.get('mode')} · "
            f"{plural(count, 'new token')} ({run.get('finish_reason')})",
            soft_wrap=True,
        )
        console.print(escape(str(run.get("prompt", ""))), style="dim", soft_wrap=True)
        console.print(escape(str(run.get("text", ""))), soft_wrap=True)
        console.print()
