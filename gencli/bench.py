"""Measure every mode: prefill, time to first token, decode speed, per-token latency, peak memory.

Two parts: a headline run (a 16-token prompt and 128 new tokens) and a sweep over total lengths,
where the no-cache loop's per-token cost grows with the length and the cached loops' barely does.
Decoding one token reads every weight once, so decode speed x weight bytes is the memory bandwidth
achieved; this command measures the machine's read bandwidth to compare against.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from gencli.generation import GenerationInterrupted, GenerationResult, generate_text
from gencli.kernels import Choice
from gencli.loading import LoadedModel
from gencli.settings import MODES, DecodingOptions
from gencli.threads import thread_policy

LENGTHS = (64, 256, 512, 1024)


class Rooflines:
    """The two limits a decode step's weight reads meet, measured on one buffer made once: a plain
    read (a sum over it) and a one-row product that reads it as a float32 [4096, n] weight through
    the one-row path the kv-cache and scratch modes take (a decode step's shape)."""

    def __init__(self, device: torch.device, megabytes: int = 256):
        from gencli.gemv import Projection

        self.device = device
        self.buffer = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
        width = 4096
        self.projection = Projection(self.buffer.view(width, -1), layout="in_out")
        self.row = torch.ones(1, width, device=device)

    def read(self, repeats: int = 7) -> float:
        """Bytes per second of a plain read: the median of timed sums."""
        return self._rate(self.buffer.sum, repeats)

    def gemv(self, repeats: int = 7) -> float:
        """Bytes per second of a one-row product over the same bytes."""
        with torch.inference_mode():
            return self._rate(lambda: self.projection(self.row), repeats)

    def _rate(self, work: Callable[[], object], repeats: int) -> float:
        timings = []
        for _ in range(repeats + 1):  # the first is a warm-up
            _synchronize(self.device)
            started = time.perf_counter()
            work()
            _synchronize(self.device)
            timings.append(time.perf_counter() - started)
        return self.buffer.nbytes / statistics.median(timings[1:])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def weight_bytes(loaded: LoadedModel) -> int:
    """The weight bytes one decode step reads: every projection (int8 ones as stored) and the LM
    head; the embedding tables only through a head tied to them (a lookup reads one row)."""
    model = loaded.model
    tables = {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    tensors = {
        id(tensor): tensor
        for tensor in (*model.parameters(), *model.buffers())
        if tensor.is_floating_point() or tensor.dtype == torch.int8
    }
    read = sum(tensor.nbytes for key, tensor in tensors.items() if key not in tables)
    head = getattr(model.lm_head, "weight", None)
    if head is not None and id(head) in tables:
        read += head.nbytes
    return read


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc), so that new allocations show in the RSS
    instead of silently reusing pages that are still resident."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory above the level at entry: CUDA's allocator statistics, or on CPU the kernel's
    resident-set high-water mark (Linux: VmHWM, reset through /proc/self/clear_refs). Nothing
    samples while the runs are timed: a sampling thread took a core from a 2-thread decode loop and
    cost it up to a quarter of its speed. `peak_bytes` stays None where the platform cannot tell."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self._baseline = torch.cuda.memory_allocated()
            return self
        _release_free_memory()
        self._baseline = _reset_resident_peak()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._baseline
        elif self._baseline is not None:
            self.peak_bytes = max(0, _resident_bytes("VmHWM") - self._baseline)


def _reset_resident_peak() -> int | None:
    """Set the high-water mark to the current resident size and return that size; None if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return _resident_bytes("VmRSS")
    except OSError:
        return None


def _resident_bytes(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field_name} in /proc/self/status")


@dataclass(frozen=True)
class BenchRow:
    """Medians over the repeats of one mode at one total length."""

    mode: str
    total_tokens: int
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    ttft_s: float
    decode_tokens_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    peak_memory_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BenchReport:
    model: str
    device: str
    weights: str  # the dtype, and +int8 where the projections are int8
    threads: int
    thread_policy: str  # how the threads wait and follow the load (gencli.threads)
    weight_bytes: int  # read by one decode step
    # Measured before every round of runs: the machine's bandwidth drifts with its neighbours' load
    # (26 to 47 GB/s between runs here), so each roofline is the median over the whole run. Two
    # rooflines: a plain read (a sum over a buffer), and a one-row product over a float32 weight
    # of the same size, the shape a decode step reads its weights in.
    read_bandwidth_samples: list[float]
    gemv_bandwidth_samples: list[float]
    headline: list[BenchRow] = field(default_factory=list)
    sweep: list[BenchRow] = field(default_factory=list)
    # The headline again with the same weights stored otherwise (bfloat16, int8), in the same run.
    variants: list[BenchReport] = field(default_factory=list)
    # Ctrl-C (or SIGTERM) stopped the run: the rows are the cells measured before it.
    interrupted: bool = False
    machine_load: tuple[float, float, float] | None = None  # the 1, 5 and 15-minute load averages
    # The one-row kernel of each kind of weight, and the measurements it was chosen from.
    kernels: list[Choice] = field(default_factory=list)

    @property
    def read_bandwidth_bytes_per_s(self) -> float | None:
        return statistics.median(self.read_bandwidth_samples) if self.read_bandwidth_samples else None

    @property
    def gemv_bandwidth_bytes_per_s(self) -> float | None:
        return statistics.median(self.gemv_bandwidth_samples) if self.gemv_bandwidth_samples else None

    def bandwidth_fraction(self, row: BenchRow) -> float:
        """Weight bytes x tokens/s as a share of the plain-read roofline."""
        return self.weight_bytes * row.decode_tokens_per_s / self.read_bandwidth_bytes_per_s

    def gemv_fraction(self, row: BenchRow) -> float:
        """The same against the one-row-product roofline."""
        return self.weight_bytes * row.decode_tokens_per_s / self.gemv_bandwidth_bytes_per_s

    def row(self, rows: list[BenchRow], mode: str, total_tokens: int | None = None) -> BenchRow | None:
        return next(
            (r for r in rows if r.mode == mode and total_tokens in (None, r.total_tokens)),
            None,
        )

    def ratios(self) -> dict[str, float]:
        """The headline ratios, from rows of this one run."""
        ratios = {}
        kv, generate = self.row(self.headline, "kv-cache"), self.row(self.headline, "generate")
        if kv and generate:
            ratios["kv_cache_vs_generate"] = kv.decode_tokens_per_s / generate.decode_tokens_per_s
        if kv:
            ratios["kv_cache_bandwidth_fraction"] = self.bandwidth_fraction(kv)
            ratios["kv_cache_gemv_fraction"] = self.gemv_fraction(kv)
        longest = max((r.total_tokens for r in self.sweep), default=None)
        cached, uncached = self.row(self.sweep, "kv-cache", longest), self.row(self.sweep, "greedy", longest)
        if cached and uncached:
            ratios[f"cache_vs_no_cache_at_{longest}"] = (
                cached.decode_tokens_per_s / uncached.decode_tokens_per_s
            )
        for variant in self.variants:
            for other in variant.headline:
                ours = self.row(self.headline, other.mode)
                if ours:
                    name = f"{other.mode}_{variant.weights}_vs_{self.weights}".replace("-", "_").replace(
                        "+", "_"
                    )
                    ratios[name] = other.decode_tokens_per_s / ours.decode_tokens_per_s
        return ratios

    def to_dict(self) -> dict[str, Any]:
        def rows(items: list[BenchRow]) -> list[dict[str, Any]]:
            return [
                {
                    **r.to_dict(),
                    "bandwidth_fraction": self.bandwidth_fraction(r),
                    "gemv_fraction": self.gemv_fraction(r),
                }
                for r in items
            ]

        return {
            "model": self.model,
            "device": self.device,
            "weights": self.weights,
            "threads": self.threads,
            "thread_policy": self.thread_policy,
            "machine_load": self.machine_load,
            "weight_bytes": self.weight_bytes,
            "read_bandwidth_bytes_per_s": self.read_bandwidth_bytes_per_s,
            "read_bandwidth_samples": self.read_bandwidth_samples,
            "gemv_bandwidth_bytes_per_s": self.gemv_bandwidth_bytes_per_s,
            "gemv_bandwidth_samples": self.gemv_bandwidth_samples,
            "headline": rows(self.headline),
            "sweep": rows(self.sweep),
            "variants": [variant.to_dict() for variant in self.variants],
            "ratios": self.ratios(),
            "kernels": [asdict(choice) for choice in self.kernels],
            "interrupted": self.interrupted,
        }


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _row(mode: str, runs: list[GenerationResult], peak_bytes: int | None) -> BenchRow:
    gaps = [
        (later - earlier) * 1000
        for run in runs
        for earlier, later in zip(run.timings.token_times_s, run.timings.token_times_s[1:], strict=False)
    ]
    first = runs[0]
    return BenchRow(
        mode=mode,
        total_tokens=len(first.prompt_token_ids) + len(first.token_ids),
        prompt_tokens=len(first.prompt_token_ids),
        new_tokens=len(first.token_ids),
        prefill_s=statistics.median([r.timings.prefill_s for r in runs]),
        ttft_s=statistics.median([r.timings.ttft_s for r in runs]),
        decode_tokens_per_s=statistics.median([r.timings.tokens_per_s or 0.0 for r in runs]),
        latency_p50_ms=_percentile(gaps, 0.5) if gaps else 0.0,
        latency_p95_ms=_percentile(gaps, 0.95) if gaps else 0.0,
        peak_memory_bytes=peak_bytes,
    )


def bench_prompt(loaded: LoadedModel, length: int, seed: int = 0) -> list[int]:
    """Random token ids: the cost of a forward pass does not depend on which tokens they are."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, loaded.model.config.vocab_size, (length,), generator=generator).tolist()


def count_runs(modes: tuple[str, ...], lengths: tuple[int, ...], repeats: int, variants: int) -> int:
    """Measured runs a `run_bench` call makes, for its progress bar."""
    return len(modes) * repeats * (len(lengths) + 1 + variants)


def run_bench(
    loaded: LoadedModel,
    modes: tuple[str, ...] = MODES,
    lengths: tuple[int, ...] = LENGTHS,
    prompt_tokens: int = 16,
    new_tokens: int = 128,
    sweep_new_tokens: int = 16,
    repeats: int = 3,
    warmup: int = 1,
    on_progress: Callable[[int, str], None] | None = None,
    variants: tuple[LoadedModel, ...] = (),
) -> BenchReport:
    """Headline: every mode, `prompt_tokens` + `new_tokens`. Sweep: every mode at each total
    length, decoding the last `sweep_new_tokens` of it. `variants`: the same model with its
    weights stored otherwise (another dtype, int8), whose headlines run alongside.
    `on_progress(runs done, what runs now)`.

    Within a cell the repeats take turns across modes (and dtypes), so a change in the machine's
    load mid-cell slows them all alike and the ratios between them hold."""
    rooflines = Rooflines(loaded.device)
    read_samples: list[float] = []
    gemv_samples: list[float] = []
    report = _empty_report(loaded, read_samples, gemv_samples)
    headline: list[tuple[LoadedModel, list[BenchRow]]] = [(loaded, report.headline)]
    for variant in variants:
        report.variants.append(_empty_report(variant, read_samples, gemv_samples))
        headline.append((variant, report.variants[-1].headline))

    def measure(subjects: list[tuple[LoadedModel, list[BenchRow]]], prompt_length: int, count: int) -> None:
        options = DecodingOptions(max_new_tokens=count, ignore_eos=True)
        cells = [
            (subject, rows, mode, bench_prompt(subject, prompt_length))
            for subject, rows in subjects
            for mode in modes
        ]
        if on_progress:
            on_progress(0, f"warm-up: {prompt_length} + {count} tokens")
        for subject, _, mode, prompt in cells:
            for _ in range(warmup):
                generate_text(subject, prompt, mode, options)
        runs: list[list[GenerationResult]] = [[] for _ in cells]
        peaks: list[list[int | None]] = [[] for _ in cells]
        for _ in range(repeats):
            read_samples.append(rooflines.read())
            gemv_samples.append(rooflines.gemv())
            for index, (subject, _, mode, prompt) in enumerate(cells):
                if on_progress:
                    on_progress(0, f"{mode}: {prompt_length} + {count} tokens")
                with PeakMemory(subject.device) as memory:
                    runs[index].append(generate_text(subject, prompt, mode, options))
                peaks[index].append(memory.peak_bytes)
                if on_progress:
                    on_progress(1, f"{mode}: done")
        for (_, rows, mode, _), cell_runs, cell_peaks in zip(cells, runs, peaks, strict=True):
            rows.append(_row(mode, cell_runs, None if None in cell_peaks else max(cell_peaks)))

    try:
        measure(headline, prompt_tokens, new_tokens)
        for length in lengths:
            measure([(loaded, report.sweep)], length - sweep_new_tokens, sweep_new_tokens)
    except (KeyboardInterrupt, GenerationInterrupted):
        report.interrupted = True
    return report


def _empty_report(loaded: LoadedModel, read_samples: list[float], gemv_samples: list[float]) -> BenchReport:
    return BenchReport(
        model=loaded.name,
        device=str(loaded.device),
        weights=loaded.weights,
        threads=torch.get_num_threads(),
        thread_policy=thread_policy(),
        weight_bytes=weight_bytes(loaded),
        read_bandwidth_samples=read_samples,
        gemv_bandwidth_samples=gemv_samples,
        machine_load=os.getloadavg() if hasattr(os, "getloadavg") else None,
        kernels=list(loaded.kernels.values()),
    )


# A public-domain passage (Jane Austen, Pride and Prejudice, 1813) for the speculation tasks.
PASSAGE = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be on "
    "his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding "
    "families, that he is considered the rightful property of some one or other of their daughters. "
    '"My dear Mr. Bennet," said his lady to him one day, "have you heard that Netherfield Park is '
    'let at last?" Mr. Bennet replied that he had not. "But it is," returned she; "for Mrs. Long has '
    'just been here, and she told me all about it." Mr. Bennet made no answer.'
)


@dataclass(frozen=True)
class SpeculationTask:
    """What a speculation bench decodes: a prompt and the options it runs under (greedy)."""

    name: str
    description: str
    prompt: str
    options: dict[str, Any]


SPECULATION_TASKS = (
    # The model writes out again, with one word changed, a passage it was given: prompt lookup's case.
    SpeculationTask(
        "edit",
        "rewrite a passage it was given (greedy, no penalties)",
        f"{PASSAGE}\n\nThe same passage, with 'wife' changed to 'house':\n\n{PASSAGE[:60]}",
        {},
    ),
    # Free text under the CLI's own preset, whose n-gram rule bans every copy prompt lookup proposes.
    SpeculationTask(
        "free",
        "free text after the passage's first sentence (the CLI preset's penalties)",
        PASSAGE[: PASSAGE.index(".") + 1],
        {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3},
    ),
)


@dataclass(frozen=True)
class SpeculationRow:
    """Medians over the repeats of one task in one mode, without and with speculation."""

    task: str
    mode: str
    new_tokens: int
    tokens_per_s_without: float
    tokens_per_s_with: float
    acceptance_rate: float | None
    tokens_per_pass: float | None
    same_tokens: bool  # with and without, every repeat

    @property
    def speedup(self) -> float:
        return self.tokens_per_s_with / self.tokens_per_s_without

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "speedup": self.speedup}


@dataclass
class SpeculationReport:
    model: str
    device: str
    weights: str
    threads: int
    speculation: dict[str, Any]  # method, speculative_tokens, draft_model
    rows: list[SpeculationRow] = field(default_factory=list)
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        tasks = {task.name: task.description for task in SPECULATION_TASKS}
        return {
            "model": self.model,
            "device": self.device,
            "weights": self.weights,
            "threads": self.threads,
            "speculation": self.speculation,
            "tasks": tasks,
            "rows": [row.to_dict() for row in self.rows],
            "interrupted": self.interrupted,
        }


def run_speculation_bench(
    loaded: LoadedModel,
    speculation: DecodingOptions,
    modes: tuple[str, ...] = ("kv-cache",),
    new_tokens: int = 128,
    repeats: int = 3,
    warmup: int = 1,
    on_progress: Callable[[int, str], None] | None = None,
) -> SpeculationReport:
    """Each task in each mode without and with `speculation`'s `speculate`, `draft_model` and
    `speculative_tokens`, taking turns run by run so that a change in the machine's load slows
    both alike; the tokens must be the same."""
    keys = ("speculate", "draft_model", "speculative_tokens")
    report = SpeculationReport(
        model=loaded.name,
        device=str(loaded.device),
        weights=loaded.weights,
        threads=torch.get_num_threads(),
        speculation={key: getattr(speculation, key) for key in keys},
    )
    try:
        for task in SPECULATION_TASKS:
            for mode in modes:
                plain = DecodingOptions(max_new_tokens=new_tokens, ignore_eos=True, **task.options)
                speculating = plain.model_copy(update=report.speculation)
                runs: dict[bool, list[GenerationResult]] = {False: [], True: []}
                for repeat in range(warmup + repeats):
                    for speculates, options in ((False, plain), (True, speculating)):
                        if on_progress:
                            on_progress(0, f"{task.name}, {mode}{', speculating' if speculates else ''}")
                        result = generate_text(loaded, task.prompt, mode, options)
                        if repeat >= warmup:
                            runs[speculates].append(result)
                            if on_progress:
                                on_progress(1, f"{task.name}: done")
                report.rows.append(_speculation_row(task.name, mode, runs[False], runs[True]))
    except (KeyboardInterrupt, GenerationInterrupted):
        report.interrupted = True
    return report


def _speculation_row(
    task: str, mode: str, plain: list[GenerationResult], speculating: list[GenerationResult]
) -> SpeculationRow:
    def speed(runs: list[GenerationResult]) -> float:
        return statistics.median([run.timings.tokens_per_s or 0.0 for run in runs])

    stats = speculating[0].speculation or {}
    return SpeculationRow(
        task=task,
        mode=mode,
        new_tokens=len(plain[0].token_ids),
        tokens_per_s_without=speed(plain),
        tokens_per_s_with=speed(speculating),
        acceptance_rate=stats.get("acceptance_rate"),
        tokens_per_pass=stats.get("tokens_per_pass"),
        same_tokens=all(run.token_ids == plain[0].token_ids for run in [*plain, *speculating]),
    )
