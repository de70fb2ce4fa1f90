"""Triton kernel: the builder's tanh GELU as one elementwise pass (optionally with a bias).

Imported lazily by ``helpers.portable.kernels`` because Triton exists only on GPU machines.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from helpers.portable.ops import GELU_COEFF, GELU_SQRT_2_OVER_PI

_BLOCK = 2048


@triton.jit
def _bias_gelu_kernel(
    x_ptr, bias_ptr, out_ptr, numel, channels, coeff, sqrt_2_over_pi,
    HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = offsets < numel
    x = tl.load(x_ptr + offsets, mask=in_range, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + offsets % channels, mask=in_range, other=0.0).to(tl.float32)
    u = sqrt_2_over_pi * (x + coeff * x * x * x)
    # tanh(u) = 1 - 2 / (exp(2u) + 1): exact limits ±1 for large |u|, no libdevice needed.
    tanh_u = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
    tl.store(out_ptr + offsets, (0.5 * x * (1.0 + tanh_u)).to(out_ptr.dtype.element_ty), mask=in_range)


def bias_gelu_into(out: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``out = gelu_tanh(x + bias)`` over contiguous tensors; ``bias`` spans the last axis."""
    numel = x.numel()
    if numel == 0:
        return
    _bias_gelu_kernel[(triton.cdiv(numel, _BLOCK),)](
        x, bias if bias is not None else x, out, numel, x.shape[-1], GELU_COEFF, GELU_SQRT_2_OVER_PI,
        HAS_BIAS=bias is not None, BLOCK=_BLOCK, num_warps=4,
    )
