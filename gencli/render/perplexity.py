"""`gencli perplexity`: the score of a text, its windows and tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from gencli.perplexity import PerplexityReport


def print_perplexity(report: PerplexityReport, console: Console) -> None:
    if report.interrupted:
        console.print(f"Interrupted: {report.scored_tokens} of {report.tokens - 1} tokens scored.")
    console.print(
        f"{report.model} · {report.weights} · {report.scored_tokens:,} tokens scored "
        f"({report.scored_bytes:,} bytes) · context {report.context}, stride {report.stride} · "
        f"{report.windows} windows",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"perplexity {report.perplexity:.3f} · {report.bits_per_token:.4f} bits per token · "
        f"{report.bits_per_byte:.4f} bits per byte",
        highlight=False,
        soft_wrap=True,
    )
