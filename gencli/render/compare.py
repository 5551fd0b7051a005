"""`gencli compare`: every mode's text, where the modes part and by what margin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from gencli.compare import Comparison


def print_comparison(comparison: Comparison, tokenizer: Any, console: Console) -> None:
    table = Table(title="Modes side by side", title_justify="left", show_lines=True)
    for column in ("mode", "tokens", "finish", "time", "decode tok/s", "completion"):
        table.add_column(column, justify="right" if column in ("tokens", "time", "decode tok/s") else "left")
    for mode, result in comparison.results.items():
        timings = result.timings
        speed = "-" if timings.tokens_per_s is None else f"{timings.tokens_per_s:.1f}"
        total = (timings.ttft_s or 0.0) + (timings.decode_s or 0.0)
        table.add_row(
            mode,
            str(len(result.token_ids)),
            result.finish_reason,
            f"{total:.2f} s",
            speed,
            escape(result.text),
        )
    console.print(table)
    divergence = comparison.divergence
    if comparison.interrupted:
        complete = len(comparison.results) - 1
        console.print(
            f"interrupted during {list(comparison.results)[-1]}: {complete} mode(s) finished", end=""
        )
        console.print("; they disagree, below" if divergence else ", and they agree")
        if divergence is None:
            return
    if divergence is None:
        count = len(next(iter(comparison.results.values())).token_ids)
        runs = "runs" if comparison.across_weights else "modes"
        console.print(f"[green]all {len(comparison.results)} {runs} agree on all {count} tokens[/green]")
        return

    def token(token_id: int | None) -> str:
        return (
            "(stopped)" if token_id is None else f"{escape(repr(tokenizer.decode([token_id])))} ({token_id})"
        )

    console.print(
        f"[bold red]modes disagree[/bold red] at new token {divergence.index}: "
        f"{divergence.reference_mode} chose {token(divergence.reference_token)}, "
        f"{divergence.other_mode} chose {token(divergence.other_token)}"
    )
    if divergence.logit_margin is not None:
        verdict = (
            "a near-tie: float rounding can flip it"
            if divergence.near_tie
            else "the other weights' rounding moved the logits that far"
            if comparison.across_weights
            else "not a near-tie: look for a bug"
        )
        console.print(f"logit margin between them: {divergence.logit_margin:.2e} ({verdict})")
    dtype = next(iter(comparison.results.values())).dtype
    if dtype in ("bfloat16", "float16"):
        console.print(
            f"in {dtype} every sum keeps only a few significant digits, so modes that add in a different "
            "order can part at close calls, even Hugging Face's own; check agreement with --dtype float32"
        )
