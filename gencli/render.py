"""Terminal output: streamed text on stdout, statistics and cache tables on stderr.

Generated text is written raw (never through rich markup), so `[brackets]` in it survive and
pipes receive exactly the model's text. rich drops colour by itself when its stream is not a terminal.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gencli.cache import CacheSnapshot

if TYPE_CHECKING:
    from gencli.generation import GenerationResult


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


class TextWriter:
    """Writes streamed text to stdout as it arrives, and ends the output with one newline."""

    def __init__(self) -> None:
        self.last_char = "\n"

    def __call__(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        self.last_char = text[-1]

    def finish(self) -> None:
        if self.last_char != "\n":
            self("\n")


def print_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _format_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def print_stats(result: GenerationResult, console: Console) -> None:
    timings = result.timings
    speed = "-" if timings.tokens_per_s is None else f"{timings.tokens_per_s:.1f} tokens/s"
    console.print(
        f"[dim]{result.mode} · {len(result.prompt_token_ids)} prompt tokens · "
        f"{len(result.token_ids)} new tokens ({result.finish_reason}) · "
        f"prefill {_format_seconds(timings.prefill_s)} · first token {_format_seconds(timings.ttft_s)} · "
        f"decode {speed} · {result.device} {result.dtype}[/dim]",
        soft_wrap=True,
    )


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def cache_table(snapshot: CacheSnapshot, when: str) -> Table:
    table = Table(
        title=f"KV cache {when}: {snapshot.seq_len} positions, {_human_bytes(snapshot.total_bytes)}",
        title_justify="left",
        caption=escape("shapes are [batch, heads, seq, head_dim]"),
        caption_justify="left",
    )
    for column in ("layer", "key shape", "value shape", "dtype", "bytes"):
        table.add_column(column, justify="right" if column in ("layer", "bytes") else "left")
    for layer in snapshot.layers:
        table.add_row(
            str(layer.layer),
            _shape(layer.key_shape),
            _shape(layer.value_shape),
            layer.dtype,
            f"{layer.bytes:,}",
        )
    table.add_section()
    table.add_row("total", "", "", "", f"{snapshot.total_bytes:,}")
    return table


def steps_table(snapshots: list[CacheSnapshot]) -> Table:
    """Growth of the cache, one row per generated token."""
    table = Table(title="KV cache at every step", title_justify="left")
    for column in ("new tokens", "seq", "key shape (every layer)", "total bytes"):
        table.add_column(column, justify="left" if column.startswith("key") else "right")
    for snapshot in snapshots:
        shapes = {layer.key_shape for layer in snapshot.layers}
        shape = _shape(shapes.pop()) if len(shapes) == 1 else "varies by layer"
        table.add_row(str(snapshot.new_tokens), str(snapshot.seq_len), shape, f"{snapshot.total_bytes:,}")
    return table


def print_cache_report(
    mode: str, uses_cache: bool, snapshots: list[CacheSnapshot], steps: bool, console: Console
) -> None:
    if not uses_cache:
        console.print(
            f"{mode} mode keeps no KV cache: every step runs the whole sequence through the model again.",
            soft_wrap=True,
        )
        return
    if not snapshots:
        console.print("The KV cache is empty: no token was generated.")
        return
    if steps:
        console.print(steps_table(snapshots))
    console.print(cache_table(snapshots[0], "after prefill"))
    if len(snapshots) > 1:
        console.print(cache_table(snapshots[-1], f"at the end ({snapshots[-1].new_tokens} new tokens)"))
