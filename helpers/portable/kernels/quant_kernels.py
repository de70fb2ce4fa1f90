"""Triton kernels of the INT8/FP8 engine on CUDA: the quantize passes in front of the GEMMs, each
one pass over memory, and the INT8-I/O skip-LayerNorm as one row pass (the 8-bit GEMM dequantizes
in its own epilogue: ``int8_gemm``).

Their references are in ``helpers.portable.quantization`` (``quantize``, ``fake_quantize``, the
input cast of ``fp8_linear``, ``int8_skip_layernorm``);
``tests/test_int8.py`` checks each against it on the GPU machine.  The skip-LayerNorm also reads and
writes int8 codes (the INT8 engine's hand-overs between it and the GEMMs, ``int8_plan``), and writes
the FP8 E4M3 codes of its INT8 values where an FP8 GEMM alone reads them, or both codes in one pass
where an FP8 GEMM and the next skip-LayerNorm read it.  Rounding is half to even
(``rint``) as in the references.  Every INT8 pass multiplies by the scale's reciprocal, where the
references divide: the product may differ from the quotient by one ulp, which moves a code by at
most one step, at a tie, and every CUDA kernel makes the same codes from the same value, so the
fused and the separate paths agree (a division per element costs the special-function unit a
reciprocal each: the INT8 GEMMs were 2-4 % slower with it).  Imported lazily: Triton exists only on
GPU machines.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from helpers.portable.kernels.common import fp8_codes, int8_codes, int8_grid, load_layernorm_params, normalize, rounded_to

_BLOCK = 2048
# What a pass stores: int8 codes, FP8 E4M3 codes, or plain float values.
INT8_CODES, FP8_CODES, FLOAT_VALUES = 0, 1, 2
# The float type a value is rounded to before its codes are made (``common.rounded_to``).
VALUE_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def output_mode(out: torch.Tensor) -> int:
    """What a kernel stores into ``out``: int8 codes, FP8 E4M3 codes, or float values of its dtype."""
    return {torch.int8: INT8_CODES, torch.float8_e4m3fn: FP8_CODES}.get(out.dtype, FLOAT_VALUES)


@triton.jit
def _quantize_kernel(x_ptr, out_ptr, numel, out_scale, MODE: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = offsets < numel
    v = tl.load(x_ptr + offsets, mask=in_range, other=0).to(tl.float32)
    if MODE == 0:
        tl.store(out_ptr + offsets, int8_codes(v, out_scale), mask=in_range)
    else:
        tl.store(out_ptr + offsets, fp8_codes(v, out_scale), mask=in_range)


def quantize_into(out: torch.Tensor, x: torch.Tensor, mode: int, out_scale: float) -> None:
    """``out = store(x)`` over contiguous tensors of one shape; ``store`` per ``mode``
    (``INT8_CODES`` or ``FP8_CODES``) with the per-tensor ``out_scale``."""
    numel = x.numel()
    if numel == 0:
        return
    _quantize_kernel[(triton.cdiv(numel, _BLOCK),)](x, out, numel, float(out_scale), MODE=mode, BLOCK=_BLOCK,
                                                     num_warps=4)


@triton.jit
def store_int8_value(v, scale, fp8_scale, OUT: tl.constexpr, VALUE_DTYPE: tl.constexpr, out_ptr):
    """What an INT8 tensor's producer stores of float32 ``v`` (its value before the INT8 grid of
    ``scale``) into ``out_ptr``: the int8 codes (``OUT`` ``INT8_CODES``); the FP8 E4M3 codes of
    ``fp8_scale`` that an FP8 GEMM's quantize pass makes from the INT8 value held in the
    ``VALUE_DTYPE`` float type (``FP8_CODES``); that INT8 value in ``out_ptr``'s type
    (``FLOAT_VALUES``)."""
    # One return: Triton 3.6 merges the types of every return, even past a constexpr branch.
    if OUT == 0:
        stored = int8_codes(v, scale)
    elif OUT == 1:
        stored = fp8_codes(rounded_to(int8_grid(v, scale) * scale, VALUE_DTYPE), fp8_scale)
    else:
        stored = (int8_grid(v, scale) * scale).to(out_ptr.dtype.element_ty)
    return stored


@triton.jit
def _int8_skip_layernorm_kernel(
    x_ptr, skip_ptr, bias_ptr, gamma_ptr, beta_ptr, out_ptr, fp8_copy_ptr, n_rows, hidden, eps, x_scale, skip_scale,
    out_scale, fp8_scale, HAS_BIAS: tl.constexpr, X_CODES: tl.constexpr, SKIP_CODES: tl.constexpr, OUT: tl.constexpr,
    FP8_COPY: tl.constexpr, VALUE_DTYPE: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    # ROWS rows per program: an int8 row is a few hundred bytes, less than the float32 LayerNorm
    # parameters, which each program reads once.
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    cols_mask = cols < hidden
    mask = (rows < n_rows)[:, None] & cols_mask[None, :]
    offsets = rows[:, None] * hidden + cols[None, :]
    # An input given as its int8 codes is already on its grid: codes · scale is the value the
    # quantize step makes from the float values those codes stand for.
    if X_CODES:
        x = tl.load(x_ptr + offsets, mask=mask, other=0).to(tl.float32) * x_scale
    else:
        x = int8_grid(tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32), x_scale) * x_scale
    if SKIP_CODES:
        skip = tl.load(skip_ptr + offsets, mask=mask, other=0).to(tl.float32) * skip_scale
    else:
        skip = int8_grid(tl.load(skip_ptr + offsets, mask=mask, other=0.0).to(tl.float32), skip_scale) * skip_scale
    v = x + skip
    if HAS_BIAS:
        v += tl.load(bias_ptr + cols, mask=cols_mask, other=0.0).to(tl.float32)[None, :]
    gamma, beta = load_layernorm_params(gamma_ptr, beta_ptr, cols, cols_mask, False)
    y = normalize(v, cols_mask, gamma[None, :], beta[None, :], hidden, eps)
    tl.store(out_ptr + offsets, store_int8_value(y, out_scale, fp8_scale, OUT, VALUE_DTYPE, out_ptr), mask=mask)
    if FP8_COPY:  # OUT 1 is FP8_CODES (a literal: a kernel reads only constexpr globals)
        tl.store(fp8_copy_ptr + offsets, store_int8_value(y, out_scale, fp8_scale, 1, VALUE_DTYPE, fp8_copy_ptr),
                 mask=mask)


# (rows per program, warps) of the INT8 skip-LayerNorm at BERT's widths: a sweep on the H100
# (bench/int8_speed.py --layernorm).
INT8_SKIP_LAYERNORM_LAUNCH = (4, 4)


def int8_skip_layernorm_into(
    out: torch.Tensor, x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
    bias: torch.Tensor | None, x_scale: float, skip_scale: float, out_scale: float, eps: float,
    launch: tuple[int, int] = INT8_SKIP_LAYERNORM_LAUNCH, fp8_scale: float | None = None,
    value_dtype: torch.dtype | None = None, fp8_copy: torch.Tensor | None = None,
) -> None:
    """The normalized output of ``quantization.int8_skip_layernorm`` over contiguous ``[..., E]`` rows.

    ``x`` and ``skip``: float values, or int8 codes of ``x_scale`` / ``skip_scale``; ``out``: int8
    for the output's codes, float8_e4m3fn for the FP8 codes of ``fp8_scale`` of its INT8 values
    rounded to ``value_dtype`` (what an FP8 GEMM reading them makes), else its INT8 values in
    ``out``'s dtype.  ``fp8_copy`` (float8_e4m3fn, ``out``'s shape): those FP8 codes too, in the
    same pass.  ``launch``: rows per program (a power of two) and warps.
    """
    mode = output_mode(out)
    if (mode == FP8_CODES or fp8_copy is not None) != (fp8_scale is not None and value_dtype is not None):
        raise ValueError("int8_skip_layernorm_into: an FP8 output, and only that, needs fp8_scale and value_dtype")
    if fp8_copy is not None and (fp8_copy.dtype != torch.float8_e4m3fn or fp8_copy.shape != out.shape):
        raise ValueError("int8_skip_layernorm_into: fp8_copy must be float8_e4m3fn of the output's shape")
    hidden = x.shape[-1]
    rows = x.numel() // hidden if hidden else 0
    if rows == 0:
        return
    rows_per_program, warps = launch
    _int8_skip_layernorm_kernel[(triton.cdiv(rows, rows_per_program),)](
        x, skip, bias if bias is not None else gamma, gamma, beta, out, out if fp8_copy is None else fp8_copy, rows,
        hidden, float(eps), float(x_scale), float(skip_scale), float(out_scale),
        1.0 if fp8_scale is None else float(fp8_scale), HAS_BIAS=bias is not None, X_CODES=x.dtype == torch.int8,
        SKIP_CODES=skip.dtype == torch.int8, OUT=mode, FP8_COPY=fp8_copy is not None,
        VALUE_DTYPE=VALUE_DTYPES[value_dtype or torch.float32], ROWS=rows_per_program,
        BLOCK=triton.next_power_of_2(hidden), num_warps=warps,
    )
