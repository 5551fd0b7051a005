"""Weight-only int8: every projection's weights stored as int8 with one float scale per output
channel; activations stay in the model's dtype.

    W[o, :] ≈ scale[o] · Q[o, :],   scale[o] = max|W[o, :]| / 127,   Q = round(W / scale) in [-127, 127]

so x · Wᵀ = (x · Qᵀ) · scale. On CPU the product is PyTorch's own int8 weight-only kernel,
`aten._weight_int8pack_mm` (the one gpt-fast uses), which reads a quarter of float32's bytes per
decode step, with its inputs in bfloat16 (or float16); everything else (layer norms, attention,
the residual stream) stays in the model's dtype. Elsewhere, where that kernel is missing, or for
an input width it cannot take (not a multiple of 16), the weights are dequantized for an ordinary
product. Every mode runs on the same `Int8Projection`
modules, so they agree with each other as they do in float32.
"""

from __future__ import annotations

import torch
from torch import nn

from gencli.kernels import KERNELS, Kernel, Prepared, kernel_dtype
from gencli.settings import Quantization

INT8PACK = KERNELS["int8pack"]
INT8_KERNEL = INT8PACK.runs_here()
# The kernel reads the input width in blocks of 16 and does not check it: another width crashes
# the process for two rows or more and returns garbage for one (measured, torch 2.13).
KERNEL_WIDTH_MULTIPLE = 16


class Int8Projection(nn.Module):
    """x · Wᵀ + b with W as int8 [out, in] rows and a scale per row."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight)  # int8 [out, in]
        self.register_buffer("scales", scales)  # [out], the activations' dtype
        self.register_buffer("bias", bias)
        # The scales as the CPU kernel takes them, made once rather than at every product.
        self.register_buffer("kernel_scales", scales.to(kernel_dtype(scales.dtype)), persistent=False)
        self.kernel_fits = INT8_KERNEL and weight.shape[1] % KERNEL_WIDTH_MULTIPLE == 0
        self._one_row: tuple[Kernel, Prepared] | None = None

    @property
    def one_row_kernel(self) -> Kernel | None:
        """The kernel of a single row on CPU (`gencli.kernels`); None: the same as more rows."""
        return None if self._one_row is None else self._one_row[0]

    @one_row_kernel.setter
    def one_row_kernel(self, kernel: Kernel) -> None:
        # int8pack is the product of every row count already, on the projection's own tensors.
        self._one_row = (
            None if kernel is INT8PACK else (kernel, kernel.prepare_int8(self.weight, self.scales, self.bias))
        )

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None, *, layout: str) -> Int8Projection:
        """From a float weight given as [in, out] (transformers' `Conv1D`) or [out, in] (`nn.Linear`)."""
        rows = (weight if layout == "out_in" else weight.t()).detach().float()  # [out, in]
        scales = rows.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        quantized = torch.round(rows / scales[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if bias is None else bias.detach().clone()
        return cls(quantized.contiguous(), scales.to(weight.dtype), bias)

    def rows(self, start: int, end: int) -> Int8Projection:
        """The projection onto output channels start..end-1: the same int8 values and scales."""
        bias = None if self.bias is None else self.bias[start:end]
        return Int8Projection(self.weight[start:end].contiguous(), self.scales[start:end], bias)

    def dequantized(self) -> torch.Tensor:
        """The weights the int8 values stand for, [out, in], in the activations' dtype."""
        return self.weight.to(self.scales.dtype) * self.scales[:, None]

    def one_row(self, x: torch.Tensor) -> torch.Tensor:
        """x · Wᵀ + b for x of one row, [1, in], on CPU: the one-row kernel, for a decode step."""
        if self._one_row is None:
            return self._product(x)
        kernel, prepared = self._one_row
        return kernel.run(x, prepared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))  # [rows, in]
        one_row = flat.size(0) == 1 and x.device.type == "cpu"
        return (self.one_row(flat) if one_row else self._product(flat)).view(*x.shape[:-1], -1)  # [..., out]

    def _product(self, flat: torch.Tensor) -> torch.Tensor:
        """x · Wᵀ + b for flat [rows, in]: int8pack on CPU where it takes the width, else the
        dequantized weights."""
        if flat.device.type == "cpu" and self.kernel_fits:
            bias = () if self.bias is None else (self.bias,)
            return INT8PACK.run(flat, (self.weight, self.kernel_scales, *bias))
        product = flat @ self.dequantized().to(flat.dtype).t()
        return product if self.bias is None else product + self.bias


def quantize_model(model: nn.Module, quantization: Quantization) -> None:
    """Replace, in place, every projection of a GPT-2 (`Conv1D`s and the LM head) by an
    `Int8Projection`. The token embedding stays as it is: a lookup reads one row, not all."""
    if quantization == "none":
        return
    from transformers.pytorch_utils import Conv1D

    with torch.no_grad():
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if isinstance(child, Conv1D):
                    setattr(parent, name, Int8Projection.quantize(child.weight, child.bias, layout="in_out"))
        head = model.lm_head
        model.lm_head = Int8Projection.quantize(head.weight, head.bias, layout="out_in")
