"""Triton kernel: the builder's GELU, tanh or exact erf form, as one elementwise pass (optionally
with a bias).

Imported lazily by ``helpers.portable.kernels`` because Triton exists only on GPU machines.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from helpers.portable.kernels.common import gelu_erf
from helpers.portable.ops import GELU_COEFF, GELU_SQRT_2_OVER_PI, GeluForm

_BLOCK = 2048


@triton.jit
def _bias_gelu_kernel(
    x_ptr, bias_ptr, out_ptr, numel, channels, coeff, sqrt_2_over_pi,
    HAS_BIAS: tl.constexpr, ERF: tl.constexpr, BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = offsets < numel
    x = tl.load(x_ptr + offsets, mask=in_range, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + offsets % channels, mask=in_range, other=0.0).to(tl.float32)
    if ERF:
        y = gelu_erf(x)
    else:
        u = sqrt_2_over_pi * (x + coeff * x * x * x)
        # tanh(u) = 1 - 2 / (exp(2u) + 1): exact limits ±1 for large |u|, no libdevice needed.
        tanh_u = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
        y = 0.5 * x * (1.0 + tanh_u)
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=in_range)


def bias_gelu_into(out: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, form: GeluForm = "tanh") -> None:
    """``out = gelu(x + bias)`` over contiguous tensors, the GELU of ``form`` computed in float32;
    ``bias`` spans the last axis; ``out`` may be ``x``."""
    numel = x.numel()
    if numel == 0:
        return
    _bias_gelu_kernel[(triton.cdiv(numel, _BLOCK),)](
        x, bias if bias is not None else x, out, numel, x.shape[-1], GELU_COEFF, GELU_SQRT_2_OVER_PI,
        HAS_BIAS=bias is not None, ERF=form == "erf", BLOCK=_BLOCK, num_warps=4,
    )
