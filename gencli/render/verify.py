"""`gencli verify`: each check with its error and verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from gencli.render.console import verdict

if TYPE_CHECKING:
    from gencli.scratch.verify import VerifyReport


def print_verify_report(report: VerifyReport, console: Console) -> None:
    from gencli.scratch.verify import CASES

    table = Table(
        title=f"From-scratch attention vs Hugging Face: {report.model}",
        title_justify="left",
        caption="a check passes when every element is within atol + rtol x |expected| (as torch.allclose)",
        caption_justify="left",
    )
    for column in ("case", "layer", "max abs error", "max rel error", "atol", "rtol", "result"):
        table.add_column(column, justify="left" if column == "case" else "right", no_wrap=column == "case")
    for check in report.checks:
        table.add_row(
            f"({check.case}) {CASES[check.case]}",
            "all" if check.layer is None else str(check.layer),
            f"{check.max_abs_error:.1e}",
            f"{check.max_rel_error:.1e}",
            f"{check.atol:.0e}",
            f"{check.rtol:.0e}",
            verdict(check.passed),
        )
    console.print(table)
    agreement = f"{report.greedy_tokens_agreeing}/{report.greedy_tokens_compared}"
    greedy = verdict(report.greedy_agrees)
    console.print(f"(d) greedy tokens, scratch vs generate: {agreement} agree  {greedy}")
    console.print(f"verification: {verdict(report.passed)}")
