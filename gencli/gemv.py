"""Projections with a fast path for a single row: the vector-matrix products (GEMVs) of a decode step.

A decode step multiplies one token's activations by every weight matrix (GPT-2 124M: 48 layer
projections and the 154 MB LM head), so it runs at the speed the weights stream from memory. Each
projection's single row runs on the kernel chosen for its kind of weight on this machine
(`gencli.kernels`, measured at load), which may read the weight in another layout or dtype than
the model's: `choose_one_row_kernels` stores each weight, in place, as its kernel reads it, so
that no engine holds a copy.

The kernels change only the order of the additions, hence rounding. Inputs of more rows, and
devices other than the CPU, take the ordinary product on the weight as given, except inside
`packed_few_row_products()` (the server's batched decode step): there a float32 product of a few
rows runs on oneDNN with the weight packed for it, 3-4x faster than MKL's small-matrix kernel
(8 rows of GPT-2 124M on a Xeon: 768x2304 in 0.21 ms against 0.77 ms, the LM head in 7 ms against
27 ms). The packed copy is made on first use and kept: only a server that batches pays its memory.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from gencli.kernels import (
    DEFAULTS,
    KERNELS,
    Choice,
    Kernel,
    Layout,
    Prepared,
    choose,
    default_kernel,
    weight_key,
    weight_kind,
)

ONEDNN_PACKED = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
REDUCED_PRECISION = (torch.bfloat16, torch.float16)
PACKED_FOR_ROWS = 8  # the row count oneDNN lays the packed weight out for (any count runs on it)
_few_rows_packed: contextvars.ContextVar[bool] = contextvars.ContextVar("few_rows_packed", default=False)


@contextmanager
def packed_few_row_products() -> Iterator[None]:
    """Within the block, float32 products of more than one row on CPU use oneDNN's packed weights."""
    token = _few_rows_packed.set(True)
    try:
        yield
    finally:
        _few_rows_packed.reset(token)


def projections(model: nn.Module) -> Iterator[tuple[nn.Module, Layout]]:
    """A transformers GPT-2's projections that a decode step multiplies one row by, with the layout
    each is given in: its `Conv1D`s ([in, out]), any `Int8Projection` and its LM head ([out, in];
    the tied embedding's weight)."""
    from transformers.pytorch_utils import Conv1D

    from gencli.quantize import Int8Projection

    for module in model.modules():
        if isinstance(module, Conv1D):
            yield module, "in_out"
        elif isinstance(module, Int8Projection):
            yield module, "out_in"
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        yield head, "out_in"


def _shape(module: nn.Module, layout: Layout) -> tuple[int, int, str]:
    """(in, out, kind) of a projection's weight."""
    rows, columns = module.weight.shape
    in_features, out_features = (rows, columns) if layout == "in_out" else (columns, rows)
    return in_features, out_features, weight_kind(module.weight)


def choose_one_row_kernels(
    model: nn.Module, setting: str = "auto", on_measure: Callable[[], None] | None = None
) -> dict[str, Choice]:
    """Give every projection of a transformers GPT-2 the one-row kernel chosen for its kind of
    weight on this machine (`gencli.kernels`: measured, cached, or forced by `setting`) as its
    `one_row_kernel`, and store each float weight, in place, in the layout its kernel reads, with
    a view of the shape the module expects. Every mode's `Projection` then reads the model's own
    tensors where the kernel keeps the model's dtype, and no engine holds a copy (GPT-2 124M
    float32: the LM head's 147 MiB once, not once per mode). Products of more rows take the view
    (BLAS reads either layout); an embedding lookup reads a strided row. CPU only: elsewhere the
    weights stay as loaded and the products are PyTorch's. Returns the choices, by weight."""
    found = [
        (module, layout)
        for module, layout in projections(model)
        if module.weight.device.type == "cpu" and weight_kind(module.weight) in DEFAULTS
    ]
    choices = choose((_shape(module, layout) for module, layout in found), setting, on_measure=on_measure)
    with torch.no_grad():
        for module, layout in found:
            kernel = KERNELS[choices[weight_key(*_shape(module, layout))].kernel]
            module.one_row_kernel = kernel
            weight = module.weight
            if weight.dtype == torch.int8:
                continue  # an Int8Projection's rows are [out, in] whatever reads them
            # Where the kernel reads a copy of its own, the model's weight takes the layout of the
            # products of more rows (a prefill, `generate`): a bfloat16 or float16 one must be
            # [out, in], or they run 6x slower (measured, 2-core EPYC).
            own = kernel.stores(weight.dtype) == weight.dtype
            wanted = kernel.layout if own else "out_in" if weight.dtype in REDUCED_PRECISION else layout
            if wanted != layout and weight.is_contiguous():
                weight.data = weight.data.t().contiguous().t()
    return choices


class Projection(nn.Module):
    """x · W + b for W given as [in, out] (transformers' `Conv1D`) or [out, in] (`nn.Linear`, a tied
    embedding). Shares W; on CPU a single row runs on `kernel` (`gencli.kernels`; the default for
    W's dtype where none is given), which reads W where it lies when W is in its layout and dtype,
    else a copy made once, here."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        layout: Layout,
        kernel: Kernel | None = None,
    ):
        super().__init__()
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.layout = layout
        self.kernel: Kernel | None = None
        self.prepared: Prepared = ()
        self.packed_weight: torch.Tensor | None = None  # oneDNN's layout, made on first use
        kind = weight_kind(weight)
        if kernel is None or kind not in kernel.serves:
            kernel = default_kernel(kind)  # None for a dtype no kernel runs (float64)
        if weight.device.type != "cpu" or kernel is None:
            return
        self.kernel = kernel
        self.prepared = kernel.prepare(self.weight, self.bias, layout)

    def one_row(self, x: torch.Tensor) -> torch.Tensor:
        """x · W + b for x of one row, [1, in]: on CPU the kernel alone, for a decode step."""
        return self(x) if self.kernel is None else self.kernel.run(x, self.prepared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None and x.shape[:-1].numel() == 1:
            return self.kernel.run(x.reshape(1, -1), self.prepared).view(*x.shape[:-1], -1)
        if (
            _few_rows_packed.get()
            and ONEDNN_PACKED
            and self.kernel is not None
            and self.weight.dtype == torch.float32
        ):
            return self._packed(x)
        if self.layout == "out_in":
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, x.size(-1))
        product = flat @ self.weight if self.bias is None else torch.addmm(self.bias, flat, self.weight)
        return product.view(*x.shape[:-1], -1)

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed_weight is None:
            out_in = self.weight if self.layout == "out_in" else self.weight.t().contiguous()
            self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(out_in, PACKED_FOR_ROWS)
        flat = x.reshape(-1, x.size(-1))  # [rows, in]
        product = torch.ops.mkldnn._linear_pointwise(flat, self.packed_weight, self.bias, "none", [], "")
        return product.view(*x.shape[:-1], -1)  # [..., out]


def fast_projection(module: nn.Module) -> nn.Module:
    """`module`, a transformers `Conv1D` or an `nn.Linear`, as the equivalent `Projection`; any other
    projection (an int8 one, whose kernel is its fast path) as it is."""
    from transformers.pytorch_utils import Conv1D

    kernel = getattr(module, "one_row_kernel", None)
    if isinstance(module, Conv1D):
        return Projection(module.weight, module.bias, layout="in_out", kernel=kernel)
    if isinstance(module, nn.Linear):
        return Projection(module.weight, module.bias, layout="out_in", kernel=kernel)
    return module


def with_fast_one_row_projections(module: nn.Module) -> nn.Module:
    """A copy of `module` that shares its parameters, with every transformers `Conv1D` replaced by an
    equivalent `Projection`. Products of more than one row compute exactly what `Conv1D` does."""
    from transformers.pytorch_utils import Conv1D

    shared = {id(tensor): tensor for tensor in [*module.parameters(), *module.buffers()]}
    twin = copy.deepcopy(module, memo=shared)
    for parent in list(twin.modules()):
        for name, child in parent.named_children():
            if isinstance(child, Conv1D):
                setattr(parent, name, fast_projection(child))
    return twin
