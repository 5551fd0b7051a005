"""`gencli models`, `pull` and `show`: the models here, and one described."""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gencli.catalog import ModelDescription, ModelEntry
from gencli.render.console import human_bytes

UNWRAPPED = 100_000  # a width no table reaches: off a terminal, each row is one line


def print_models(entries: list[ModelEntry], console: Console, suggest_pull: bool = True) -> None:
    """Models gencli can run, then the others apart with the reason. On a terminal, paths wrap
    to its width (never cut); off one, nothing wraps, so a path stays whole for grep and cut."""
    if not console.is_terminal:
        console = Console(file=console.file, width=UNWRAPPED, highlight=False)
    runnable = [entry for entry in entries if entry.runnable]
    others = [entry for entry in entries if not entry.runnable]
    table = Table(title="Models gencli can run here", title_justify="left")
    for column in ("name", "source", "parameters", "size", "path"):
        table.add_column(
            column,
            justify="right" if column in ("parameters", "size") else "left",
            overflow="fold",
            no_wrap=column != "path",
        )
    for entry in runnable:
        parameters = "-" if entry.parameters is None else f"{entry.parameters / 1e6:.1f}M"
        table.add_row(entry.name, entry.source, parameters, human_bytes(entry.size_bytes), entry.path)
    console.print(table)
    if suggest_pull and not any(entry.source == "hub cache" for entry in runnable):
        console.print(
            "No runnable hub models in the local Hugging Face cache (gencli pull MODEL adds one).",
            soft_wrap=True,
        )
    if others:
        table = Table(title="Cached models gencli cannot run", title_justify="left")
        for column in ("name", "reason", "path"):
            table.add_column(column, overflow="fold")
        for entry in others:
            table.add_row(entry.name, entry.reason or "", entry.path)
        console.print(table)


def print_model_description(description: ModelDescription, console: Console) -> None:
    entry = description.entry
    rows = [
        ("name", entry.name),
        ("source", entry.source),
        ("path", entry.path),
        ("runs here", "yes" if entry.runnable else f"no: {entry.reason}"),
        ("architecture", description.architecture or entry.model_type or "-"),
        ("layers / heads / width", f"{description.layers} / {description.heads} / {description.width}"),
        ("parameters", "-" if entry.parameters is None else f"{entry.parameters:,}"),
        ("context", f"{description.context_length} tokens"),
        ("vocabulary", f"{description.vocab_size} tokens"),
        ("dtype", description.dtype or "- (float32)"),
        ("size on disk", human_bytes(entry.size_bytes)),
        ("tokenizer", description.tokenizer),
        ("generation config", json.dumps(description.generation_config, ensure_ascii=False) or "{}"),
    ]
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, escape(str(value)))
    console.print(table)
