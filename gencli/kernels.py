"""One-row products (a decode step's GEMVs), each run by the kernel measured fastest on this machine.

A decode step reads every weight once for one row of activations, so it runs at the speed its
kernels stream weights, and which kernel streams fastest depends on the CPU. Measured on GPT-2
124M's matrices, 2 threads (GB/s of the weight's own bytes; plain read ~28 GB/s on the EPYC):

    kernel               EPYC (AVX2)                       Xeon (AVX-512, AMX)
    bmm-split  float32   19-28                             24-33
    linear     float32   14-24 (MKL: one core)             12-15
    bfloat16 / float16   14-18 (compute-bound: 7-9 Gw/s)   35-39 (oneDNN off)
    int8pack             8-10  (compute-bound)             ~25

So at a model's load each distinct kind of projection weight (shape and dtype) gets its kernel:

- from the user's cache, `$XDG_CACHE_HOME/gencli/kernels.json`, whose entries are keyed by the
  machine (CPU model, instruction sets, torch version, thread count): another machine's entry,
  or one that is damaged or names a kernel that cannot run here, is measured again, not trusted;
- otherwise by measuring every candidate that runs here on copies of a random weight of that
  shape, enough copies to stream from memory rather than cache as a real step does, in
  alternating rounds. A candidate whose numbers differ from a float64 reference by more than
  the dtype's tolerance is never chosen; the fastest of the rest is, and the table is stored.
- `kernels` (setting / `--kernels`) forces one kernel for every weight it can run.

A candidate may store the weight otherwise than the model does (bfloat16 as float32, exactly; int8
dequantized): the choice then costs memory, and it is taken only where it is faster. Weights too
small to stream (`MEASURED_FROM`) take the default kernel: their products cost their calls, not
their bytes. Products of more rows are not chosen here (`gencli.gemv`).
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch.nn import functional as F

from gencli.errors import GencliError
from gencli.files import atomic_path
from gencli.settings import KernelName, user_cache_dir

Layout = Literal["in_out", "out_in"]
Prepared = tuple[torch.Tensor, ...]  # what a kernel reads: the weight as it stores it, and the rest
CACHE_FORMAT = 1
# Weights of fewer elements take the default kernel unmeasured (a 512x512 matrix: 1 MiB in float32).
MEASURED_FROM = 1 << 18
ROUNDS = 5
# A kernel is timed over copies of its weight that fill twice the last-level cache, so that each
# product streams its weight from memory as a decode step does; at most this many.
MOST_COPIES = 256
# The instruction sets that decide which kernels run, and how fast.
RELEVANT_FLAGS = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "avx_ne_convert", "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip
TOLERANCE = {  # largest error relative to the output's largest magnitude
    "float32": 1e-4,  # the order of the additions
    "bfloat16": 1e-2,  # 8-bit mantissas, and the result rounded to one (measured: 2-3e-3)
    "float16": 4e-3,
    "int8": 1e-2,  # int8pack takes its activations in bfloat16 (measured: 3-6e-3)
}


class KernelError(GencliError):
    """A forced kernel that cannot run: `kernel` is its name."""

    def __init__(self, kernel: str, problem: str):
        self.kernel = kernel
        super().__init__(f"kernel {kernel!r} {problem}")


def weight_kind(weight: torch.Tensor) -> str:
    """float32, bfloat16, float16 or int8: what a kernel must run."""
    return str(weight.dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Kernel:
    """A one-row product y = x · W + b. `prepare` turns a weight (given [out, in] or [in, out]) into
    what `run` reads, a view where the weight already is in `layout` and `storage`, else a copy."""

    name: str
    serves: frozenset[str]  # weight kinds
    layout: Layout
    storage: torch.dtype | None  # None: the weight's own dtype
    run_prepared: Callable[[torch.Tensor, Prepared], torch.Tensor]
    # From [out, in] and the bias; None: the weight in `layout` and `storage`, and the bias.
    prepare_weight: Callable[[torch.Tensor, torch.Tensor | None], Prepared] | None = None
    # From int8 [out, in] rows, their scales and the bias; for the kernels that serve int8.
    prepare_int8: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], Prepared] | None = None
    needs: Callable[[], bool] = lambda: True
    compiled: bool = False

    def __deepcopy__(self, memo: dict) -> Kernel:
        return self  # one object per kernel: a copied module runs the same one

    def stores(self, dtype: torch.dtype) -> torch.dtype:
        return self.storage or dtype

    def runs_here(self) -> bool:
        return self.needs()

    def prepare(self, weight: torch.Tensor, bias: torch.Tensor | None, layout: Layout) -> Prepared:
        """For a float weight, given [in, out] or [out, in] as `layout` says."""
        if self.prepare_weight is not None:
            return self.prepare_weight(weight if layout == "out_in" else weight.t(), bias)
        stored = weight.detach().to(self.stores(weight.dtype))
        if stored.dtype != weight.dtype and not torch.isfinite(stored).all():
            # Beyond the narrower storage's range (float16 tops out at 65504, bfloat16 at 3e38):
            # float32 holds every value exactly, and the kernel runs on it all the same.
            stored = weight.detach().float()
        if layout != self.layout:
            stored = stored.t()
        stored = stored if stored.is_contiguous() else stored.contiguous()
        return (stored,) if bias is None else (stored, bias.detach().to(stored.dtype))

    def run(self, x: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        """x: [1, in] in the activations' dtype. Returns [1, out] in the same dtype."""
        product = self.run_prepared(x, prepared)
        # Each call costs ~3 us on a 2-core EPYC, even where nothing changes: checked in Python.
        return product if product.dtype == x.dtype else product.to(x.dtype)


# -- float kernels --------------------------------------------------------------------------------


def _split_bmm_prepare(out_in: torch.Tensor, bias: torch.Tensor | None) -> Prepared:
    """[in, out] float32 viewed as [parts, in / parts, out], one part per thread, and the bias as
    [parts, 1, out] with zeros past the first part: `baddbmm` adds it inside the product. The
    parts are fixed here (the thread count may change later, gencli.threads): the split decides
    the order of the additions, hence the rounding."""
    in_out = out_in.t().to(torch.float32)
    in_out = in_out if in_out.is_contiguous() else in_out.contiguous()
    width, out = in_out.shape
    parts = torch.get_num_threads()
    parts = parts if parts > 1 and width % parts == 0 else 1
    split_bias = torch.zeros(parts, 1, out, dtype=torch.float32, device=out_in.device)
    if bias is not None:
        split_bias[0, 0] = bias
    return in_out.view(parts, width // parts, out), split_bias


def _split_bmm(x: torch.Tensor, prepared: Prepared) -> torch.Tensor:
    weight, split_bias = prepared  # [parts, in / parts, out], [parts, 1, out]
    parts, part_width, _ = weight.shape
    rows = (x if x.dtype == torch.float32 else x.to(torch.float32)).view(parts, 1, part_width)
    return torch.baddbmm(split_bias, rows, weight).sum(0)  # [1, out]


def _linear(x: torch.Tensor, prepared: Prepared) -> torch.Tensor:
    weight, *bias = prepared
    return F.linear(x.to(weight.dtype), weight, *bias)


@contextmanager
def onednn_disabled() -> Iterator[None]:
    """PyTorch's own reduced-precision GEMV runs only while oneDNN is off; switched off around one
    call, since products of more rows are 50x slower without it."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def _linear_without_onednn(x: torch.Tensor, prepared: Prepared) -> torch.Tensor:
    with onednn_disabled():
        return _linear(x, prepared)


def _onednn_packed_prepare(out_in: torch.Tensor, bias: torch.Tensor | None) -> Prepared:
    packed = torch.ops.mkldnn._reorder_linear_weight(out_in.contiguous(), 1)
    return (packed,) if bias is None else (packed, bias.detach())


def _onednn_packed(x: torch.Tensor, prepared: Prepared) -> torch.Tensor:
    packed, *bias = prepared
    return torch.ops.mkldnn._linear_pointwise(
        x.to(packed.dtype), packed, bias[0] if bias else None, "none", [], ""
    )


@cache
def _compiled_product() -> Callable[..., torch.Tensor]:
    # Inductor imports a deprecated module of torch's own (torch.utils.mkldnn) on first use.
    warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)

    def product(
        x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        # One reduction over `in` that converts each weight as it reads it: the form inductor fuses.
        return (weight.to(torch.float32) * x.to(torch.float32)).sum(-1) * scale + bias

    return torch.compile(product, dynamic=True)


def _compiled_prepare_int8(
    out_in: torch.Tensor, scales: torch.Tensor | None, bias: torch.Tensor | None
) -> Prepared:
    out = out_in.shape[0]
    scale = torch.ones(out) if scales is None else scales.to(torch.float32)
    bias = torch.zeros(out) if bias is None else bias.detach().to(torch.float32)
    return out_in.contiguous(), scale, bias


def _compiled_prepare(out_in: torch.Tensor, bias: torch.Tensor | None) -> Prepared:
    return _compiled_prepare_int8(out_in, None, bias)


def _compiled(x: torch.Tensor, prepared: Prepared) -> torch.Tensor:
    weight, scale, bias = prepared
    return _compiled_product()(x, weight, scale, bias).view(1, -1)  # [1, out]


def _has_compiler() -> bool:
    return any(shutil.which(name) for name in ("c++", "g++", "clang++"))


def _onednn_packs() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


# -- int8 kernels: the weight is int8 [out, in], the extra (scales [out], bias [out] or None) -------


def _int8_dequantized_prepare(
    out_in: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None
) -> Prepared:
    return _split_bmm_prepare(out_in.to(torch.float32) * scales.to(torch.float32)[:, None], bias)


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the int8 kernel's inputs take for activations of `dtype`: its float32 path is a
    slow reference loop (1.7 GB/s against 14-27 GB/s in bfloat16, measured), so float32 activations
    enter the product in bfloat16 and the result returns to float32."""
    return torch.bfloat16 if dtype == torch.float32 else dtype


def _int8pack_prepare(out_in: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> Prepared:
    """`scales` are in the activations' dtype, which the kernel takes converted once, here."""
    return (out_in.contiguous(), scales.to(kernel_dtype(scales.dtype)), *(() if bias is None else (bias,)))


def _int8pack(x: torch.Tensor, prepared: Prepared) -> torch.Tensor:
    weight, scales, *bias = prepared
    product = torch.ops.aten._weight_int8pack_mm(x.to(scales.dtype), weight, scales).to(x.dtype)
    return product + bias[0] if bias else product


def _int8pack_fits() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


FLOATS = frozenset({"float32", "bfloat16", "float16"})
KERNELS: dict[str, Kernel] = {
    kernel.name: kernel
    for kernel in (
        # float32 [in, out] split by thread; a float weight of another dtype stored as float32
        # (exact, twice the memory), an int8 one dequantized.
        Kernel(
            "bmm-split",
            FLOATS | {"int8"},
            "in_out",
            torch.float32,
            _split_bmm,
            prepare_weight=_split_bmm_prepare,
            prepare_int8=_int8_dequantized_prepare,
        ),
        Kernel("linear", FLOATS, "out_in", None, _linear),  # as PyTorch dispatches it: MKL or oneDNN
        # PyTorch's own reduced-precision GEMV runs only with oneDNN off.
        Kernel("linear-no-onednn", FLOATS, "out_in", None, _linear_without_onednn),
        # bfloat16 weights stored as float16, converted by F16C where the CPU has it.
        Kernel("linear-float16", frozenset({"bfloat16"}), "out_in", torch.float16, _linear_without_onednn),
        Kernel(
            "onednn-packed",
            FLOATS,
            "out_in",
            None,
            _onednn_packed,
            prepare_weight=_onednn_packed_prepare,
            needs=_onednn_packs,
        ),
        # torch.compile'd reduction converting each weight as it reads it: torchao's int8
        # weight-only formula, which it leaves to the compiler on CPU.
        Kernel(
            "compiled",
            FLOATS | {"int8"},
            "out_in",
            None,
            _compiled,
            prepare_weight=_compiled_prepare,
            prepare_int8=_compiled_prepare_int8,
            needs=_has_compiler,
            compiled=True,
        ),
        Kernel(
            "int8pack",
            frozenset({"int8"}),
            "out_in",
            None,
            _int8pack,
            prepare_int8=_int8pack_prepare,
            needs=_int8pack_fits,
        ),
    )
}
assert set(KERNELS) == set(get_args(KernelName)) - {"auto"}, "settings.KernelName must list every kernel"
DEFAULTS = {
    "float32": "bmm-split",
    "bfloat16": "linear-no-onednn",
    "float16": "linear-no-onednn",
    "int8": "int8pack",
}


def default_kernel(kind: str) -> Kernel | None:
    """The kernel a weight too small to measure runs; None for a kind none runs (float64)."""
    return KERNELS[DEFAULTS[kind]] if kind in DEFAULTS else None


# -- the machine, the cache --------------------------------------------------------------------------


@cache
def _cpu() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and the instruction sets among RELEVANT_FLAGS it has (Linux; elsewhere
    the platform's processor string and none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), ()
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in text.splitlines() if ":" in line)
    )
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", platform.machine()), tuple(
        flag for flag in RELEVANT_FLAGS if flag in flags
    )


def machine() -> dict[str, Any]:
    """What a measurement depends on, besides the weight: a cache entry holds only where all agree."""
    model, flags = _cpu()
    return {"cpu": model, "isa": list(flags), "torch": torch.__version__, "threads": torch.get_num_threads()}


def cache_path() -> Path:
    return user_cache_dir() / "kernels.json"


@cache
def _last_level_cache_bytes() -> int:
    try:
        sizes = [
            Path(index, "size").read_text().strip()
            for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")
        ]
        largest = max(int(size.rstrip("K")) * 1024 if size.endswith("K") else int(size) for size in sizes)
    except (OSError, ValueError):
        largest = 32 << 20
    return max(largest, 8 << 20)


@dataclass
class Timing:
    """One candidate's measurement for one kind of weight."""

    kernel: str
    ms: float  # median time of one product
    gb_s: float  # the bytes the kernel reads over that time
    error: float  # largest difference from the float64 reference, over the largest output
    within_tolerance: bool


@dataclass
class Choice:
    """The kernel a kind of weight runs, and why: `source` is measured, cached, forced or
    default (too small to measure); `table` what the choice was made from, fastest first."""

    weight: str  # "768x2304 float32": in x out and kind
    kernel: str
    source: str
    table: list[Timing] = field(default_factory=list)


def weight_key(in_features: int, out_features: int, kind: str) -> str:
    return f"{in_features}x{out_features} {kind}"


def _read_cache(path: Path) -> list[dict[str, Any]]:
    """The cache's entries; none where the file is missing or damaged (it is then rewritten)."""
    try:
        data = json.loads(path.read_text())
        entries = data["entries"] if data.get("format") == CACHE_FORMAT else []
        return [entry for entry in entries if isinstance(entry, dict)]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []


def _cached_choice(entries: list[dict[str, Any]], key: str, here: dict[str, Any]) -> Choice | None:
    for entry in entries:
        if entry.get("machine") != here or entry.get("weight") != key:
            continue
        kernel = KERNELS.get(entry.get("kernel"))
        try:
            table = [Timing(**row) for row in entry.get("table", [])]
        except TypeError:
            return None
        kind = key.rsplit(" ", 1)[-1]
        if kernel is None or kind not in kernel.serves or not kernel.runs_here():
            return None
        return Choice(key, kernel.name, "cached", table)
    return None


def _write_cache(path: Path, here: dict[str, Any], choices: Iterable[Choice]) -> None:
    """Add the measured choices to the file, replacing this machine's earlier ones for the same
    weights; other machines' entries stay (a home folder may be shared)."""
    measured = {choice.weight: choice for choice in choices if choice.source == "measured"}
    if not measured:
        return
    entries = [
        entry
        for entry in _read_cache(path)
        if not (entry.get("machine") == here and entry.get("weight") in measured)
    ]
    entries += [
        {
            "machine": here,
            "weight": choice.weight,
            "kernel": choice.kernel,
            "table": [asdict(row) for row in choice.table],
        }
        for choice in measured.values()
    ]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial:
            partial.write_text(json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1) + "\n")
    except OSError:
        pass  # a read-only cache costs a measurement at the next load, nothing else


# -- measuring -----------------------------------------------------------------------------------


def candidates(kind: str) -> list[Kernel]:
    """The kernels measured for a kind of weight: those that run it here, except compiled ones.
    torch.compile costs 15 s at a machine's first load and 1-2 s per shape in every later process
    (inductor's kernels load per process), and its products were slower than bmm-split's on both
    CPUs measured (4-6 against 6-8 G weights/s on the EPYC): it runs where forced."""
    return [
        kernel
        for kernel in KERNELS.values()
        if kind in kernel.serves and kernel.runs_here() and not kernel.compiled
    ]


def _sample_weight(
    in_features: int, out_features: int, kind: str
) -> tuple[torch.Tensor, tuple | None, torch.Tensor]:
    """A random weight of the kind ([out, in]), what else its projection holds, and its exact
    float64 value."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(out_features, in_features, generator=generator) * 0.02
    if kind == "int8":
        scales = values.abs().amax(dim=1).clamp(min=1e-12) / 127
        rows = torch.round(values / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return rows, (scales, None), rows.double() * scales.double()[:, None]
    weight = values.to(getattr(torch, kind))
    return weight, None, weight.double()


def _prepared_bytes(prepared: Prepared) -> int:
    weight = prepared[0]
    try:
        return weight.untyped_storage().nbytes()
    except RuntimeError:  # an opaque (oneDNN-packed) tensor
        return weight.numel() * weight.element_size()


def measure(in_features: int, out_features: int, kind: str, kernels: list[Kernel]) -> list[Timing]:
    """Time each kernel on copies of one random weight, enough to stream them from memory, in
    `ROUNDS` alternating rounds; check each against the float64 product. Fastest first."""
    weight, extra, exact = _sample_weight(in_features, out_features, kind)
    activation = torch.float32 if kind == "int8" else weight.dtype
    x = (torch.randn(1, in_features, generator=torch.Generator().manual_seed(1))).to(activation)
    reference = (x.double() @ exact.t())[0]
    scale = reference.abs().max().item()
    prepared, errors, copies = {}, {}, {}
    for kernel in kernels:
        try:
            if kind == "int8":
                first = kernel.prepare_int8(weight, *extra)
            else:
                first = kernel.prepare(weight, None, "out_in")
            result = kernel.run(x, first)[0].double()
        except (RuntimeError, NotImplementedError):
            continue  # the kernel refuses this CPU or shape (oneDNN's bf16 packing on AVX2)
        errors[kernel.name] = (result - reference).abs().max().item() / scale
        count = min(MOST_COPIES, max(1, math.ceil(2 * _last_level_cache_bytes() / _prepared_bytes(first))))
        copies[kernel.name] = count
        prepared[kernel.name] = [first] + [tuple(part.clone() for part in first) for _ in range(count - 1)]
    times: dict[str, list[float]] = {name: [] for name in prepared}
    names = list(prepared)
    # Read between a warm-up call and the timed ones, so that no weight starts in the cache.
    flush = torch.ones(2 * _last_level_cache_bytes() // 4)
    for round_ in range(ROUNDS):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)] if names else []:
            kernel, weights = KERNELS[name], prepared[name]
            kernel.run(x, weights[-1])
            flush.sum()
            started = time.perf_counter()
            for one in weights:
                kernel.run(x, one)
            times[name].append((time.perf_counter() - started) / len(weights))
    table = []
    for name in names:
        seconds = statistics.median(times[name])
        table.append(
            Timing(
                kernel=name,
                ms=round(seconds * 1e3, 4),
                gb_s=round(_prepared_bytes(prepared[name][0]) / seconds / 1e9, 2),
                error=float(f"{errors[name]:.3g}"),
                within_tolerance=errors[name] <= TOLERANCE[kind],
            )
        )
    return sorted(table, key=lambda row: row.ms)


def choose(
    weights: Iterable[tuple[int, int, str]],
    forced: str = "auto",
    path: Path | None = None,
    on_measure: Callable[[], None] | None = None,
) -> dict[str, Choice]:
    """The kernel for each kind of weight (in, out, kind): forced, from the cache, or measured.
    `on_measure` is called once before the first measurement (a start-up status says why the
    first load on a machine takes seconds longer)."""
    path = path or cache_path()
    here = machine()
    entries = _read_cache(path) if forced == "auto" else []
    choices: dict[str, Choice] = {}
    for in_features, out_features, kind in weights:
        key = weight_key(in_features, out_features, kind)
        if key in choices:
            continue
        if forced != "auto":
            choices[key] = _forced_choice(forced, key, kind)
        elif in_features * out_features < MEASURED_FROM:
            choices[key] = Choice(key, DEFAULTS[kind], "default")
        else:
            cached = _cached_choice(entries, key, here)
            if cached is None:
                if on_measure is not None:
                    on_measure()
                    on_measure = None
                table = measure(in_features, out_features, kind, candidates(kind))
                fit = [row for row in table if row.within_tolerance]
                cached = Choice(key, fit[0].kernel if fit else DEFAULTS[kind], "measured", table)
            choices[key] = cached
    if forced != "auto" and not any(choice.source == "forced" for choice in choices.values()):
        kinds = sorted({key.rsplit(" ", 1)[-1] for key in choices})
        raise KernelError(
            forced,
            f"runs {', '.join(sorted(KERNELS[forced].serves))} weights and this model's are "
            f"{', '.join(kinds)}: choose another, or auto",
        )
    _write_cache(path, here, choices.values())
    return choices


def _forced_choice(name: str, key: str, kind: str) -> Choice:
    kernel = KERNELS[name]
    if not kernel.runs_here():
        raise KernelError(name, "cannot run on this machine; choose another, or auto")
    if kind not in kernel.serves:
        # A model has one or two kinds (float, and int8 with --quantize int8): a kernel that serves
        # none of them is a mistake, one that serves another kind leaves that kind to the default.
        return Choice(key, DEFAULTS[kind], "default")
    return Choice(key, name, "forced")
