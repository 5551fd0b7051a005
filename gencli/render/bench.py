"""`gencli bench`: speed per mode and weights, the rooflines, and the report as a plot."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from gencli.render.console import human_bytes
from gencli.render.plots import load_pyplot, save_figure

if TYPE_CHECKING:
    from gencli.bench import BenchReport, BenchRow, SpeculationReport


def _bench_table(title: str, report: BenchReport, rows: list[BenchRow]) -> Table:
    table = Table(
        title=title, title_justify="left", caption="times in ms, peak memory in MiB", caption_justify="left"
    )
    for column in ("mode", "tokens", "prefill", "TTFT", "tok/s", "p50", "p95", "peak", "BW", "GEMV"):
        table.add_column(column, justify="left" if column == "mode" else "right", no_wrap=True)
    for row in rows:
        table.add_row(
            row.mode,
            f"{row.prompt_tokens}+{row.new_tokens}",
            f"{row.prefill_s * 1000:.1f}",
            f"{row.ttft_s * 1000:.1f}",
            f"{row.decode_tokens_per_s:.1f}",
            f"{row.latency_p50_ms:.1f}",
            f"{row.latency_p95_ms:.1f}",
            "n/a" if row.peak_memory_bytes is None else f"{row.peak_memory_bytes / 2**20:.1f}",
            f"{report.bandwidth_fraction(row):.0%}",
            f"{report.gemv_fraction(row):.0%}",
        )
    return table


def kernel_table(report: BenchReport) -> Table:
    """Per kind of weight, the kernel it runs and why, under what each candidate measured."""
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"One-row kernels, {report.weights}",
        title_justify="left",
        caption="GB/s of the weight's bytes as each kernel stores them (medians of alternating rounds "
        "over copies that stream from memory); error: the largest difference from a float64 product, "
        "relative to the largest output; small weights take the default unmeasured",
        caption_justify="left",
    )
    for column in ("weight", "kernel", "GB/s", "error", ""):
        table.add_column(column, justify="right" if column in ("GB/s", "error") else "left", no_wrap=True)
    for choice in report.kernels:
        if not choice.table:
            reason = {"default": "default (small)", "forced": "forced"}.get(choice.source, "")
            table.add_row(choice.weight, choice.kernel, "", "", reason)
            continue
        for index, row in enumerate(choice.table):
            if row.kernel == choice.kernel:
                note = "chosen" if choice.source == "measured" else f"chosen ({choice.source})"
            else:
                note = "" if row.within_tolerance else "beyond tolerance"
            table.add_row(
                choice.weight if index == 0 else "",
                row.kernel,
                f"{row.gb_s:.1f}",
                f"{row.error:.1e}",
                note,
                end_section=index == len(choice.table) - 1,
            )
    return table


def print_bench(report: BenchReport, console: Console) -> None:
    if report.interrupted:
        console.print(f"Interrupted: the {len(report.headline) + len(report.sweep)} rows measured before it.")
    if not report.read_bandwidth_samples:
        return
    load = "" if report.machine_load is None else f" · load average {report.machine_load[0]:.2f}"
    plural = "" if report.threads == 1 else "s"
    threads = f"{report.threads} thread{plural} ({report.thread_policy})"
    console.print(
        f"{report.model} · {report.device} {report.weights} · {threads}{load} · "
        f"weights read per token {human_bytes(report.weight_bytes)}",
        soft_wrap=True,
    )
    for name, median, samples in (
        ("plain read", report.read_bandwidth_bytes_per_s, report.read_bandwidth_samples),
        ("one-row product (GEMV)", report.gemv_bandwidth_bytes_per_s, report.gemv_bandwidth_samples),
    ):
        console.print(
            f"roofline, {name}: {median / 1e9:.1f} GB/s (median of {len(samples)}, one before "
            f"each round of runs: {min(samples) / 1e9:.1f}-{max(samples) / 1e9:.1f})",
            soft_wrap=True,
        )
    for measured in (report, *report.variants):
        if measured.kernels:
            console.print(kernel_table(measured))
    console.print(_bench_table(f"Headline run, {report.weights} (medians)", report, report.headline))
    if report.sweep:
        console.print(_bench_table("By total length (medians)", report, report.sweep))
    for variant in report.variants:
        title = f"Headline run, {variant.weights} (medians)"
        console.print(_bench_table(title, variant, variant.headline))
    console.print(
        "tok/s: decode tokens/s; BW and GEMV: weight bytes read per token x tok/s as a share of the "
        "plain-read and the one-row-product roofline; peak MiB: memory above the level before the runs",
        soft_wrap=True,
    )
    for name, value in report.ratios().items():
        console.print(f"{name.replace('_', ' ')}: {value:.2f}" + ("" if "fraction" in name else "x"))


def save_bench_plot(report: BenchReport, path: str) -> None:
    pyplot = load_pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for mode in dict.fromkeys(row.mode for row in report.sweep):
        rows = [row for row in report.sweep if row.mode == mode]
        axes.plot(
            [r.total_tokens for r in rows], [r.decode_tokens_per_s for r in rows], marker="o", label=mode
        )
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("total tokens (prompt + new)")
    axes.set_ylabel("decode tokens/s")
    axes.set_title(f"{report.model}, {report.device} {report.weights}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    save_figure(figure, pyplot, path, "--plot")


def print_speculation_bench(report: SpeculationReport, console: Console) -> None:
    """Each task and mode: tokens/s without and with speculation, the speed-up, the acceptance."""
    from gencli.bench import SPECULATION_TASKS

    if report.interrupted:
        console.print(f"Interrupted: the {len(report.rows)} rows measured before it.")
    speculation = report.speculation
    draft = f" ({speculation['draft_model']})" if speculation["speculate"] == "draft" else ""
    threads = f"{report.threads} thread{'' if report.threads == 1 else 's'}"
    console.print(
        f"{report.model} · {report.device} {report.weights} · {threads} · speculate "
        f"{speculation['speculate']}{draft}, {speculation['speculative_tokens']} tokens a pass",
        soft_wrap=True,
    )
    table = Table(title="Speculative decoding (medians, greedy)", title_justify="left")
    for column in (
        "task",
        "mode",
        "tokens",
        "tok/s without",
        "tok/s with",
        "speed-up",
        "accepted",
        "tok/pass",
        "same",
    ):
        table.add_column(column, justify="left" if column in ("task", "mode") else "right", no_wrap=True)
    for row in report.rows:
        table.add_row(
            row.task,
            row.mode,
            str(row.new_tokens),
            f"{row.tokens_per_s_without:.1f}",
            f"{row.tokens_per_s_with:.1f}",
            f"{row.speedup:.2f}x",
            "-" if row.acceptance_rate is None else f"{row.acceptance_rate:.0%}",
            "-" if row.tokens_per_pass is None else f"{row.tokens_per_pass:.2f}",
            "yes" if row.same_tokens else "NO",
        )
    console.print(table)
    for task in SPECULATION_TASKS:
        console.print(f"{task.name}: {task.description}", soft_wrap=True)
