"""Projections with a fast path for a single row: the vector-matrix products (GEMVs) of a decode step.

A decode step multiplies one token's activations by every weight matrix (GPT-2 124M: 48 layer
projections and the 154 MB LM head), so it runs at the speed the weights stream from memory.
PyTorch's CPU defaults leave much of that unused for one row (2-core EPYC with AVX-512, measured):

- float32: MKL runs a one-row product on one core, 14-24 GB/s, while both cores read 31 GB/s.
  Splitting the reduction dimension into one part per thread, a free view of an [in, out] weight,
  and multiplying the parts as a batch (`bmm` gives each thread one) reaches 24-33 GB/s; the
  partial products are then added. An [out, in] weight is slower either way (12-15 GB/s), so the
  LM head (and the embedding tied to it) is stored [in, out] at load (`lay_out_for_one_row`).
- bfloat16 / float16: oneDNN's one-row path runs at ~15 GB/s. PyTorch's own reduced-precision
  GEMV reaches 35-39 GB/s, but only for an [out, in] weight and only while oneDNN is off, which
  would make every product of more than one row 50x slower; so it is switched off around the
  one-row call alone, and the [in, out] `Conv1D` weights are stored [out, in] at load.

The fast paths change only the order of the additions, hence rounding. Inputs of more rows, and
devices other than the CPU, take the ordinary product on the weight as given, except inside
`packed_few_row_products()` (the server's batched decode step): there a float32 product of a few
rows runs on oneDNN with the weight packed for it, 3-4x faster than MKL's small-matrix kernel here
(8 rows of GPT-2 124M: 768x2304 in 0.21 ms against 0.77 ms, the LM head in 7 ms against 27 ms). The
packed copy is made on first use and kept: only a server that batches pays its memory.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Layout = Literal["in_out", "out_in"]
REDUCED_PRECISION = (torch.bfloat16, torch.float16)
ONEDNN_PACKED = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
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


@contextmanager
def onednn_disabled() -> Iterator[None]:
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def wanted_layout(dtype: torch.dtype) -> Layout:
    """The layout the one-row kernel for `dtype` reads fastest (see the module's docstring)."""
    return "out_in" if dtype in REDUCED_PRECISION else "in_out"


def lay_out_for_one_row(model: nn.Module) -> None:
    """Store, in place, every float projection weight of a transformers GPT-2 (`Conv1D`s, the LM
    head and the embedding tied to it) in the layout its one-row kernel reads; each module keeps a
    view of the shape it expects. Every mode's `Projection` then reads the model's own tensors, and
    no engine holds a copy (GPT-2 124M float32: the LM head's 147 MiB once, not once per mode).
    Products of more rows take the view (BLAS reads either layout); an embedding lookup reads a
    strided row. CPU only: elsewhere the weights stay as loaded."""
    from transformers.pytorch_utils import Conv1D

    layouts: dict[nn.Parameter, Layout] = {}
    for module in model.modules():
        if isinstance(module, Conv1D):
            layouts[module.weight] = "in_out"
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        layouts[head.weight] = "out_in"  # the tied embedding's too: the same Parameter
    with torch.no_grad():
        for weight, layout in layouts.items():
            if weight.device.type != "cpu" or not weight.is_floating_point():
                continue
            if wanted_layout(weight.dtype) != layout and weight.is_contiguous():
                weight.data = weight.data.t().contiguous().t()


class Projection(nn.Module):
    """x · W + b for W given as [in, out] (transformers' `Conv1D`) or [out, in] (`nn.Linear`, a tied
    embedding). Shares W; on CPU it also keeps W in the layout its one-row kernel reads, a view
    where the given layout already is that one and a copy otherwise (made once, here)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, layout: Layout):
        super().__init__()
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.layout = layout
        self.one_row_weight: torch.Tensor | None = None
        self.packed_weight: torch.Tensor | None = None  # oneDNN's layout, made on first use
        # One part per thread, fixed here: the thread count may change later (gencli.threads), and
        # the split decides the order of the additions, hence the rounding.
        self.parts = torch.get_num_threads()
        if weight.device.type != "cpu":
            return
        one_row = self.weight if wanted_layout(weight.dtype) == layout else self.weight.t()
        # A view where the model's weights were laid out for it (`lay_out_for_one_row`), else a copy.
        self.one_row_weight = one_row if one_row.is_contiguous() else one_row.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_row_weight is not None and x.shape[:-1].numel() == 1:
            return self._one_row(x)
        if (
            _few_rows_packed.get()
            and ONEDNN_PACKED
            and self.one_row_weight is not None
            and self.weight.dtype == torch.float32
        ):
            return self._packed(x)
        if self.layout == "out_in":
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, x.size(-1))
        product = flat @ self.weight if self.bias is None else torch.addmm(self.bias, flat, self.weight)
        return product.view(*x.shape[:-1], -1)

    def _one_row(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.one_row_weight
        if weight.dtype in REDUCED_PRECISION:
            with onednn_disabled():
                return F.linear(x, weight, self.bias)
        parts, width = self.parts, x.size(-1)
        if parts == 1 or width % parts:
            product = x.reshape(1, width) @ weight
        else:
            product = torch.bmm(
                x.reshape(parts, 1, width // parts), weight.view(parts, width // parts, -1)
            ).sum(0)
        if self.bias is not None:
            product += self.bias
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

    if isinstance(module, Conv1D):
        return Projection(module.weight, module.bias, layout="in_out")
    if isinstance(module, nn.Linear):
        return Projection(module.weight, module.bias, layout="out_in")
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
