"""Triton helpers shared by the fast path's kernels: LayerNorm statistics, the tanh and the exact erf
GELU, the INT8 grid's and FP8 E4M3's rounding and a GEMM's K loop.  Each is a ``@triton.jit`` function that the
kernels of ``norms``, ``quant_kernels``, ``gelu``, ``few_rows_gemm``, ``int8_gemm`` and
``int8_attention`` inline.  Imported lazily, like those modules: Triton exists only on GPU machines.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def normalize(v, cols_mask, gamma, beta, hidden, eps):
    # Statistics over the last axis: of one row (1-D ``v``) or of each row of a block (2-D).
    mean = tl.sum(v, axis=-1, keep_dims=True) / hidden
    var = tl.sum(v * v, axis=-1, keep_dims=True) / hidden - mean * mean
    return (v - mean) * (1.0 / tl.sqrt(var + eps)) * gamma + beta


@triton.jit
def load_layernorm_params(gamma_ptr, beta_ptr, cols, cols_mask, USE_PDL: tl.constexpr):
    # The LayerNorm parameters are weights: read before waiting for the previous kernel (kernels.pdl).
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    gamma = tl.load(gamma_ptr + cols, mask=cols_mask, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + cols, mask=cols_mask, other=0.0).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    return gamma, beta


@triton.jit
def gelu_tanh(v, coeff, sqrt_2_over_pi):
    u = sqrt_2_over_pi * (v + coeff * v * v * v)
    # tanh(u) = 1 - 2 / (exp(2u) + 1): exact limits ±1 for large |u|.
    return 0.5 * v * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))


# 1/√2: erf(x/√2) = 2·Φ(x) - 1.
SQRT_HALF = tl.constexpr(0.7071067811865476)


@triton.jit
def gelu_erf(v):
    """The exact GELU x·Φ(x) = ½·x·(1 + erf(x/√2)), in the order of PyTorch's (approximate="none")."""
    return v * 0.5 * (1.0 + tl.erf(v * SQRT_HALF))


@triton.jit
def dot_k_blocks(a_ptrs, w_ptrs, ks, k_len, acc, EVEN_K: tl.constexpr, BLOCK_K: tl.constexpr):
    """``acc`` + the product of ``k_len`` columns of the row tile at ``a_ptrs`` [BLOCK_M, BLOCK_K] and
    the K-major weight tile at ``w_ptrs`` [BLOCK_K, BLOCK_N], BLOCK_K at a time (the last block
    masked unless ``EVEN_K``); the pointer kernels' main loop, accumulating in ``acc``'s type."""
    # The padding of the last block: a float zero for FP8 codes (an integer does not convert to them).
    if a_ptrs.dtype.element_ty.is_fp8():
        zero = 0.0
    else:
        zero = 0
    for start in tl.range(0, k_len, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            left = k_len - start
            a = tl.load(a_ptrs, mask=ks[None, :] < left, other=zero)
            w = tl.load(w_ptrs, mask=ks[:, None] < left, other=zero)
        acc = tl.dot(a, w, acc, out_dtype=acc.dtype)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    return acc


@triton.jit
def int8_grid(v, scale):
    """The code of ``v`` on the INT8 grid of ``scale``, as a float."""
    return tl.minimum(tl.maximum(libdevice.rint(v * (1.0 / scale)), -128.0), 127.0)


# 1.5 · 2²³: adding it to a float32 of magnitude ≤ 2²² makes the adder round that value to an
# integer (half to even, as ``rint``) held in the sum's low mantissa bits, and the sum's low byte is
# then the int8 code (the constant's is zero).  Two ALU operations instead of ``rint`` and a
# float-to-int conversion, which take the conversion unit (16 per clock per SM on Hopper): that
# unit bounds the INT8 GEMM's epilogue.
ROUNDING_SHIFT = tl.constexpr(12582912.0)
ROUNDING_SHIFT_BITS = tl.constexpr(0x4B400000)  # its float32 bits


@triton.jit
def int8_codes(v, scale):
    """``int8_grid(v, scale)`` as int8."""
    shifted = tl.minimum(tl.maximum(v * (1.0 / scale), -128.0), 127.0) + ROUNDING_SHIFT
    return shifted.to(tl.int32, bitcast=True).to(tl.int8)


FP8_E4M3_MAX = tl.constexpr(448.0)  # the largest finite E4M3 value (``quantization.FP8_E4M3_MAX``)


@triton.jit
def fp8_codes(v, scale):
    """The E4M3 codes of ``v / scale`` saturated to the finite range, rounded to nearest even: the
    ``float8_e4m3fn`` cast of ``quantization.fp8_linear``'s clamped quotient (a division, as there)."""
    return tl.minimum(tl.maximum(v / scale, -FP8_E4M3_MAX), FP8_E4M3_MAX).to(tl.float8e4nv)


@triton.jit
def rounded_to(v, VALUE_DTYPE: tl.constexpr):
    """float32 ``v`` rounded to the float type ``VALUE_DTYPE`` stands for (``quant_kernels.VALUE_DTYPES``;
    0: float32, unchanged): the value a tensor of that type holds, from which the next quantize pass
    makes its codes."""
    if VALUE_DTYPE == 1:
        v = v.to(tl.float16).to(tl.float32)
    elif VALUE_DTYPE == 2:
        v = v.to(tl.bfloat16).to(tl.float32)
    return v
