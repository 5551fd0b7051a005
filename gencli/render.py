"""Terminal output: streamed text on stdout, statistics and cache tables on stderr.

Generated text is written raw (never through rich markup), so `[brackets]` in it survive and
pipes receive exactly the model's text. rich drops colour by itself when its stream is not a terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gencli.cache import CacheSnapshot
from gencli.catalog import ModelDescription, ModelEntry
from gencli.errors import GencliError

if TYPE_CHECKING:
    from gencli.bench import BenchReport, BenchRow
    from gencli.chat import TurnResult as ChatTurn
    from gencli.compare import Comparison
    from gencli.perplexity import PerplexityReport
    from gencli.results import GenerationResult
    from gencli.scratch.explain import Explanation, WorkedExample
    from gencli.scratch.probe import AttentionMap
    from gencli.scratch.verify import VerifyReport
    from gencli.settings import ResolvedSettings
    from gencli.tokens import TokenPiece


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def stdout_console() -> Console:
    return Console(highlight=False)


class TextWriter:
    """Writes streamed text to stdout as it arrives, and ends the output with one newline."""

    def __init__(self) -> None:
        self.last_char = "\n"

    def __call__(self, text: str) -> None:
        self.write(text)

    def write(self, text: str) -> None:
        if not text:
            return
        sys.stdout.write(text)
        sys.stdout.flush()
        self.last_char = text[-1]

    def finish(self) -> None:
        if self.last_char != "\n":
            self.write("\n")


class HeldBackWriter(TextWriter):
    """Streams text but holds back an ending that could be the start of a stop string, so that a
    reply ended by the next speaker's tag (`\nUser:`) never shows the tag; `finish(kept)`
    writes what remains of the reply as kept."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        super().__init__()
        self.stops = stops
        self.received = ""
        self.written = 0

    def __call__(self, text: str) -> None:
        self.received += text
        held = max(
            (
                size
                for stop in self.stops
                for size in range(len(stop), 0, -1)
                if self.received.endswith(stop[:size])
            ),
            default=0,
        )
        safe = len(self.received) - held
        if safe > self.written:
            self.write(self.received[self.written : safe])
            self.written = safe

    def finish(self, kept: str | None = None) -> None:
        kept = self.received if kept is None else kept
        if len(kept) > self.written and kept.startswith(self.received[: self.written]):
            self.write(kept[self.written :])
        super().finish()


class ProbabilityWriter(TextWriter):
    """Writes each new token coloured by its probability (green likely ... red unlikely). A token
    may hold part of a character: bytes wait until the character is whole, and take the colour of
    the token that completes it. Off a terminal, plain text."""

    def __init__(self, tokenizer: Any) -> None:
        import codecs

        super().__init__()
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.console = Console(highlight=False)

    def token(self, record: dict[str, Any]) -> None:
        import math

        from rich.text import Text

        from gencli.tokens import token_bytes

        text = self.decoder.decode(token_bytes(self.tokenizer, record["token"]))
        if text:
            self.console.print(Text(text, style=probability_style(math.exp(record["logprob"]))), end="")
            self.console.file.flush()
            self.last_char = text[-1]


def probability_style(probability: float) -> str:
    for floor, style in ((0.5, "green"), (0.2, "yellow"), (0.05, "dark_orange"), (0.0, "red")):
        if probability >= floor:
            return style
    return "red"


def json_line(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


def print_json(data: Any) -> None:
    sys.stdout.write(json_line(data))
    sys.stdout.flush()


def print_models(entries: list[ModelEntry], console: Console) -> None:
    """Models gencli can run, then the others apart with the reason; paths wrap, never cut."""
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
        table.add_row(entry.name, entry.source, parameters, _human_bytes(entry.size_bytes), entry.path)
    console.print(table)
    if not any(entry.source == "hub cache" for entry in runnable):
        console.print("No runnable hub models in the local Hugging Face cache (gencli pull MODEL adds one).")
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
        ("size on disk", _human_bytes(entry.size_bytes)),
        ("tokenizer", description.tokenizer),
        ("generation config", json.dumps(description.generation_config, ensure_ascii=False) or "{}"),
    ]
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, escape(str(value)))
    console.print(table)


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
            f"{count} new tokens ({run.get('finish_reason')})",
            soft_wrap=True,
        )
        console.print(escape(str(run.get("prompt", ""))), style="dim", soft_wrap=True)
        console.print(escape(str(run.get("text", ""))), soft_wrap=True)
        console.print()


def _format_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def print_stats(result: GenerationResult, console: Console) -> None:
    timings = result.timings
    speed = "-" if timings.tokens_per_s is None else f"{timings.tokens_per_s:.1f} tokens/s"
    reused = f" ({result.prompt_cache_tokens} reused from a cache)" if result.prompt_cache_tokens else ""
    console.print(
        f"[dim]{result.mode} · {len(result.prompt_token_ids)} prompt tokens{reused} · "
        f"{len(result.token_ids)} new tokens ({result.finish_reason}) · "
        f"prefill {_format_seconds(timings.prefill_s)} · first token {_format_seconds(timings.ttft_s)} · "
        f"decode {speed} · load {_format_seconds(timings.load_s)} · "
        f"total {_format_seconds(timings.total_s)} · {result.device} {result.dtype}[/dim]",
        soft_wrap=True,
    )


def print_turn_stats(turn: ChatTurn, console: Console) -> None:
    result = turn.result
    timings = result.timings
    speed = "-" if timings.tokens_per_s is None else f"{timings.tokens_per_s:.1f} tokens/s"
    console.print(
        f"[dim]turn {turn.number} · {turn.cached_tokens} tokens from the cache + {turn.prefilled_tokens} "
        f"prefilled · prefill {_format_seconds(timings.prefill_s)} · first token "
        f"{_format_seconds(timings.ttft_s)} · decode {speed} · {len(result.token_ids)} new tokens "
        f"({result.finish_reason})[/dim]",
        soft_wrap=True,
    )


def print_logprobs(logprobs: list[dict[str, Any]], console: Console) -> None:
    """One row per new token: the token, its probability, and the alternatives with theirs."""
    import math

    table = Table(title="Next-token probabilities (after the logits processors)", title_justify="left")
    for column in ("#", "token", "p", "most likely"):
        table.add_column(column, justify="right" if column in ("#", "p") else "left", overflow="fold")
    for index, step in enumerate(logprobs):
        others = ", ".join(
            f"{_token_label(alternative['text'], 12)} {math.exp(alternative['logprob']):.2f}"
            for alternative in step["top"]
        )
        table.add_row(
            str(index),
            escape(_token_label(step["text"], 16)),
            f"{math.exp(step['logprob']):.3f}",
            escape(others),
        )
    console.print(table)


_TOKEN_STYLES = ("black on cyan", "black on yellow")


def print_tokens(pieces: list[TokenPiece], console: Console) -> None:
    """On a terminal, the text with each token on its own colour; then one line per token (id,
    piece) and the count."""
    from rich.text import Text

    if console.is_terminal:
        inline = Text()
        for index, piece in enumerate(pieces):
            inline.append(piece.label, style=_TOKEN_STYLES[index % 2])
        console.print(inline, soft_wrap=True)
    width = max((len(str(piece.id)) for piece in pieces), default=1)
    for index, piece in enumerate(pieces):
        line = Text(f"{piece.id:>{width}}  ")
        line.append(piece.label, style=_TOKEN_STYLES[index % 2] if console.is_terminal else "")
        console.print(line, soft_wrap=True, highlight=False)
    console.print(f"{len(pieces)} tokens", highlight=False)


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
        title=f"KV cache {when}: {snapshot.seq_len} of {snapshot.capacity} positions in use, "
        f"{_human_bytes(snapshot.used_bytes)} of {_human_bytes(snapshot.total_bytes)} allocated",
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
            _shape(layer.key_shape),
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


def _verdict(passed: bool) -> str:
    return "[green]PASS[/green]" if passed else "[bold red]FAIL[/bold red]"


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
            _verdict(check.passed),
        )
    console.print(table)
    agreement = f"{report.greedy_tokens_agreeing}/{report.greedy_tokens_compared}"
    greedy = _verdict(report.greedy_agrees)
    console.print(f"(d) greedy tokens, scratch vs generate: {agreement} agree  {greedy}")
    console.print(f"verification: {_verdict(report.passed)}")


_SHADES = "░▒▓█"  # four levels; masked cells (the future) stay blank


def _token_label(token: str, width: int) -> str:
    label = token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·")
    return label if len(label) <= width else label[: width - 1] + "…"


def _heat_style(level: float) -> str:
    """Dark blue (0) to yellow (1)."""
    low, high = (20, 24, 60), (250, 220, 40)
    red, green, blue = (round(a + (b - a) * level) for a, b in zip(low, high, strict=True))
    return f"rgb({red},{green},{blue})"


def print_attention_heatmap(amap: AttentionMap, console: Console, label_width: int = 10) -> None:
    """Rows are queries, columns keys; each cell is two characters, shaded by weight / max weight."""
    from rich.text import Text

    count = len(amap.tokens)
    fits = max(4, (console.width - label_width - 7) // 2)
    first = max(0, count - fits)  # long prompts: the most recent positions matter most
    positions = range(first, count)
    labels = {i: _token_label(amap.tokens[i], label_width) for i in positions}
    peak = float(amap.weights[first:, first:].max()) or 1.0

    title = f"attention, layer {amap.layer}, head {amap.head}: rows attend to columns"
    shown = "" if first == 0 else f" (last {count - first} of {count} tokens)"
    console.print(title + shown, soft_wrap=True)
    for row in range(max(len(label) for label in labels.values())):
        header = "".join((labels[i][row] if row < len(labels[i]) else " ") + " " for i in positions)
        console.print(" " * (label_width + 6) + header, highlight=False, markup=False)
    for i in positions:
        line = Text(f"{i:>4} {labels[i]:>{label_width}} ")
        for j in positions:
            if j > i:
                line.append("  ")
                continue
            level = float(amap.weights[i, j]) / peak
            line.append(_SHADES[min(3, int(level * 4))] * 2, style=_heat_style(level))
        console.print(line, soft_wrap=True)
    console.print(f"shading: {_SHADES[0]} low … {_SHADES[-1]} high, relative to the top weight {peak:.3f}")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise GencliError("images need matplotlib: pip install 'gencli[plot]'") from None
    return pyplot


def _save(figure: Any, pyplot: Any, path: str, flag: str) -> None:
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=120)
    except OSError as error:
        raise GencliError(f"cannot write {path}: {error.strerror}; check the {flag} path") from None
    finally:
        pyplot.close(figure)


def save_attention_png(amap: AttentionMap, path: str) -> None:
    pyplot = _pyplot()
    labels = [_token_label(token, 16) for token in amap.tokens]
    size = max(4.0, 0.35 * len(labels) + 2)
    figure, axes = pyplot.subplots(figsize=(size, size))
    image = axes.imshow(amap.weights.numpy(), cmap="viridis", vmin=0.0)
    axes.set_xticks(range(len(labels)), labels, rotation=90)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("key (attended to)")
    axes.set_ylabel("query")
    axes.set_title(f"layer {amap.layer}, head {amap.head}")
    figure.colorbar(image, ax=axes, fraction=0.046)
    _save(figure, pyplot, path, "--png")


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


class ProgressBar:
    """A transient progress bar on stderr. Call it to advance it or change its label."""

    def __init__(self, bar: Any, task: Any, label: str):
        self._bar, self._task, self._label = bar, task, label

    def __call__(self, advance: int = 0, description: str | None = None) -> None:
        self._bar.update(self._task, advance=advance, description=description or self._label)

    @contextlib.contextmanager
    def cleared(self, stream: Any) -> Iterator[None]:
        """Off the screen while output is written to `stream`, when that is a terminal too: they
        share the screen, and a line written beside the bar would land on the bar's line."""
        if not (stream.isatty() and self._bar.console.is_terminal):
            yield
            return
        self._bar.stop()
        try:
            yield
        finally:
            self._bar.start()


@contextlib.contextmanager
def progress(total: int, label: str) -> Iterator[ProgressBar]:
    """A progress bar on stderr for `total` steps."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr_console(), transient=True) as bar:
        yield ProgressBar(bar, bar.add_task(label, total=total), label)


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


def print_bench(report: BenchReport, console: Console) -> None:
    if report.interrupted:
        console.print(f"Interrupted: the {len(report.headline) + len(report.sweep)} rows measured before it.")
    if not report.read_bandwidth_samples:
        return
    load = "" if report.machine_load is None else f" · load average {report.machine_load[0]:.2f}"
    plural = "" if report.threads == 1 else "s"
    wait_policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    threads = f"{report.threads} thread{plural} (OMP_WAIT_POLICY {wait_policy})"
    console.print(
        f"{report.model} · {report.device} {report.weights} · {threads}{load} · "
        f"weights read per token {_human_bytes(report.weight_bytes)}",
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


def save_bench_plot(report: BenchReport, path: str) -> None:
    pyplot = _pyplot()
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
    _save(figure, pyplot, path, "--plot")


def _say(console: Console, text: str = "") -> None:
    """A line of plain text: no markup, no highlighting, not wrapped (tables of numbers)."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _numbers(values: Any, digits: int = 4) -> str:
    """Aligned columns with `digits` decimals."""
    return "  ".join(f"{float(value):>8.{digits}f}" for value in values)


def _vector(vector: Any, shown: int) -> str:
    """The first `shown` values of a 1-d tensor, and how many there are."""
    more = f"  … ({len(vector)} in all)" if len(vector) > shown else ""
    return f"[{_numbers(vector[:shown])} ]{more}"


def _matrix(console: Console, title: str, matrix: Any, row_labels: list[str] | None = None) -> None:
    rows = matrix.tolist()
    labels = row_labels or [""] * len(rows)
    width = max(map(len, labels))
    # Whole-number tables (the worked example's inputs) without decimals.
    digits = 0 if all(float(value).is_integer() for row in rows for value in row) else 4
    _say(console, f"{title}  {_shape((len(rows), len(rows[0])))}")
    for label, row in zip(labels, rows, strict=True):
        _say(console, f"  {label:>{width}} {_numbers(row, digits)}")
    _say(console)


def print_worked_example(example: WorkedExample, console: Console) -> None:
    """The tutorials' 3-token self-attention as tables of numbers, unmasked and then causal."""
    tokens = ["token 0", "token 1", "token 2"]
    dims = [f"in {i}" for i in range(4)]

    def say(text: str = "") -> None:
        _say(console, text)

    say("Self-attention by hand: 3 tokens of 4 dimensions, d_k = 3, scores not scaled")
    say()
    _matrix(console, "x: one row per token", example.x, tokens)
    for name, weight in (("W_q", example.w_q), ("W_k", example.w_k), ("W_v", example.w_v)):
        _matrix(console, f"{name}: one row per input dimension", weight, dims)
    _matrix(console, "Q = x·W_q: the queries", example.query, tokens)
    _matrix(console, "K = x·W_k: the keys", example.key, tokens)
    _matrix(console, "V = x·W_v: the values", example.value, tokens)
    _matrix(
        console, "scores = Q·Kᵀ: row i, column j = token i's query · token j's key", example.scores, tokens
    )
    _matrix(console, "weights = softmax of each row of the scores", example.weights, tokens)
    _matrix(console, "output = weights·V: each row a weighted sum of the values", example.output, tokens)
    say("With GPT-2's causal mask, no token attends to a later one (masked scores count as -∞):")
    say()
    _matrix(console, "weights, causal", example.causal_weights, tokens)
    _matrix(console, "output, causal", example.causal_output, tokens)


def print_explanation(explained: Explanation, console: Console, shown: int = 6) -> None:
    """One head's attention for one query position, step by step, then the KV cache and the check."""
    say = console.print
    steps, position, head, head_dim = explained.steps, explained.position, explained.head, explained.head_dim
    n_embd = head_dim * explained.n_head
    labels = [_token_label(token, 12) for token in explained.tokens]
    count = len(labels)
    start, end = head * head_dim, (head + 1) * head_dim

    def line(text: str = "") -> None:
        _say(console, text)

    line(
        f"Attention, step by step: model {explained.model}, layer {explained.layer}, head {head}, "
        f"the query at position {position} ({labels[position]}) of {count} tokens"
    )
    line(
        f"{explained.n_head} heads of {head_dim} dimensions (n_embd {n_embd}); vectors show the first {shown}"
    )
    line()
    line(f"1. The input row: x = LayerNorm₁(hidden state at position {position}), shape [{n_embd}]")
    line(f"   x = {_vector(steps.x, shown)}")
    line()
    line(
        f"2. Head {head}'s projections: columns {start}:{end} of W_q, W_k and W_v "
        f"([{n_embd}, {head_dim}] each, plus biases)"
    )
    line(f"   q = x·W_q + b_q, shape [{head_dim}]: {_vector(steps.query, shown)}")
    line(f"   and for every position j, k_j = x_j·W_k + b_k and v_j = x_j·W_v + b_v, shape [{head_dim}]:")
    width = max(map(len, labels))
    for j in range(position + 1):
        line(f"   {j:>4} {labels[j]:>{width}}  k {_vector(steps.keys[j], min(shown, 4))}")
        line(f"   {'':>4} {'':>{width}}  v {_vector(steps.values[j], min(shown, 4))}")
    line()
    line(
        f"3. Scores q·k_j, scaled by {steps.scale:.4f} (1/√{head_dim}), masked where j > {position}, "
        "and their softmax:"
    )
    line(f"   {'j':>4} {'token':>{width}}  {'q·k_j':>10} {'scaled':>10}  weight")
    for j in range(count):
        if not steps.allowed[j]:
            line(f"   {j:>4} {labels[j]:>{width}}  masked: position {j} comes after the query")
            continue
        weight = float(steps.weights[j])
        bar = "█" * round(weight * 20)
        line(
            f"   {j:>4} {labels[j]:>{width}}  {float(steps.raw_scores[j]):>10.4f} "
            f"{float(steps.scaled_scores[j]):>10.4f}  {weight:.4f} {bar}"
        )
    line()
    line(f"4. The head's output: Σ_j weight_j · v_j, shape [{head_dim}]")
    line(f"   {_vector(steps.head_output, shown)}")
    line()
    line(
        f"5. Next: the {explained.n_head} heads' outputs side by side make a row of {n_embd} (head {head} at "
        f"columns {start}:{end}); the output projection W_o [{n_embd}, {n_embd}] + b_o turns it into the "
        f"attention output, shape [{n_embd}]:"
    )
    line(f"   {_vector(explained.attention_output, shown)}")
    line("   It is added to the residual stream; then come LayerNorm₂ and the MLP.")
    line()
    cache = explained.cache
    cached = f"positions 0-{position - 1}" if position else "no positions"
    line(f"6. With a KV cache, as generation computes position {position}:")
    line(f"   keys and values of {cached} come from the cache, {_shape(cache.cached_shape)} each")
    line(f"   position {position}'s key and value are computed now, {_shape(cache.new_shape)} each")
    line(
        f"   the query attends over {_shape(cache.attended_shape)}; the output differs from step 5 "
        f"by at most {cache.max_abs_difference:.1e}"
    )
    line()
    check = explained.check
    say(
        f"check against Hugging Face's layer {explained.layer} attention at position {position}: max abs "
        f"error {check.max_abs_error:.1e}, max rel error {check.max_rel_error:.1e} (atol {check.atol:g}, "
        f"rtol {check.rtol:g}): {_verdict(check.passed)}",
        highlight=False,
        soft_wrap=True,
    )
