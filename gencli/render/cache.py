"""--inspect-cache: the KV cache per layer after prefill and at the end, and step by step."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gencli.cache import CacheSnapshot
from gencli.render.console import human_bytes
from gencli.render.words import plural


def shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def cache_table(snapshot: CacheSnapshot, when: str) -> Table:
    table = Table(
        title=f"KV cache {when}: {snapshot.seq_len} of {snapshot.capacity} positions in use, "
        f"{human_bytes(snapshot.used_bytes)} of {human_bytes(snapshot.total_bytes)} allocated",
        title_justify="left",
        caption=escape(
            "keys and values each [batch, heads, positions in use, head_dim]; kv-cache and scratch "
            "allocate every position up front, generate's cache grows"
        ),
        caption_justify="left",
    )
    for column in ("layer", "shape", "dtype", "positions", "bytes used", "allocated"):
        table.add_column(column, justify="left" if column in ("shape", "dtype") else "right", no_wrap=True)
    for layer in snapshot.layers:
        table.add_row(
            str(layer.layer),
            shape_text(layer.key_shape),
            layer.dtype,
            f"{layer.positions}/{layer.capacity}",
            f"{layer.used_bytes:,}",
            f"{layer.bytes:,}",
        )
    table.add_section()
    table.add_row(
        "total",
        "",
        "",
        f"{snapshot.seq_len}/{snapshot.capacity}",
        f"{snapshot.used_bytes:,}",
        f"{snapshot.total_bytes:,}",
    )
    return table


def steps_table(snapshots: list[CacheSnapshot]) -> Table:
    """Growth of the cache, one row per generated token; with speculation, two per verification
    pass: the positions it wrote, then what the roll-back kept."""
    events = any(snapshot.event for snapshot in snapshots)
    table = Table(title="KV cache at every step", title_justify="left")
    columns = ("new tokens", "seq", "key shape (every layer)", "total bytes", *(("event",) if events else ()))
    for column in columns:
        table.add_column(column, justify="left" if column.startswith(("key", "event")) else "right")
    for snapshot in snapshots:
        shapes = {layer.key_shape for layer in snapshot.layers}
        shape = shape_text(shapes.pop()) if len(shapes) == 1 else "varies by layer"
        event = (snapshot.event or ("after prefill" if snapshot.new_tokens == 1 else ""),)
        table.add_row(
            str(snapshot.new_tokens),
            str(snapshot.seq_len),
            shape,
            f"{snapshot.total_bytes:,}",
            *(event if events else ()),
        )
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
        console.print(
            cache_table(snapshots[-1], f"at the end ({plural(snapshots[-1].new_tokens, 'new token')})")
        )
