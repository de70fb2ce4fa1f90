"""Triton 8-bit tensor-core GEMM with the dequantize in its epilogue (the INT8 and FP8 engines' GEMMs
on CUDA).

``out = store(gelu?(acc · col_scales[n] + bias[n]))`` with ``acc`` the product of 8-bit activation
codes ``[M, K]`` and weight codes ``[N, K]`` of one type (both row-major, i.e. K-contiguous: the
operand layout Hopper's wgmma takes for 8-bit types, so ``tl.dot`` lowers to it on sm_90): int8
codes with the exact int32 product, or FP8 E4M3 codes (``torch.float8_e4m3fn``) accumulated in
float32.  ``col_scales`` is ``in_scale · w_scale[n]``; ``store`` writes float values in ``out``'s
dtype, their codes on the INT8 grid of ``out_scale`` into an int8 ``out``, or their E4M3 codes of
``out_scale`` into a float8_e4m3fn ``out`` (the next FP8 GEMM's input).
No int32 tensor is ever written: ``torch._int_mm`` + a dequantize pass write and read one.

The reference is ``quantization.int8_linear``'s arithmetic (exact integer product, float32
dequantize + bias), or ``quantization.fp8_linear``'s for E4M3 operands, followed by the GELU
(``ops.gelu_tanh``, or the exact erf form of ``torch.nn.functional.gelu``) and
``quantization.quantize`` / ``fake_quantize``, or the E4M3 cast of ``fp8_linear``.  Before
quantizing, ``y`` is rounded to ``value_dtype``, the float type of the tensor the engine's
reference plan holds there, so the codes are those the next layer's quantize pass would make from
it; as in ``quant_kernels`` the INT8 grid's multiplication by the scale's reciprocal may round one
ulp away from PyTorch's division (a code moves by at most one step; the E4M3 codes divide, as
PyTorch).  Where the value is rounded to FP16 or BF16 and then quantized, the tanh GELU's tanh is
the hardware approximation (``_gelu_tanh_approx``), whose error that rounding all but hides;
elsewhere, and for the erf GELU always, the exact formula.  Hopper's FP8 tensor cores add each
K block's products in a narrower format before the float32 accumulator (as ``fp8_linear`` says),
so FP8 results move by about 2⁻¹¹ of the accumulated magnitude.  Imported lazily: Triton exists
only on GPU machines.

Two kernels: for more than ``_SMALL_M`` rows (BERT at batch ≥ 2) with 16-byte aligned operands and
a 1- or 2-byte output, operand tiles come through TMA descriptors and persistent programs walk the
tiles (``TMA_CONFIGS``); otherwise cp.async loads with masks (``CONFIGS``).  The GELU and the
requantize are ALU work in the epilogue, which the two programs per SM overlap with tensor-core
work.  Throughput of both kernels against cuBLAS FP16: docs/perf/KERNELS.md, "INT8 engine".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from helpers.portable.kernels.common import dot_k_blocks, fp8_codes, gelu_erf, gelu_tanh, int8_codes, rounded_to
from helpers.portable.kernels.quant_kernels import FLOAT_VALUES, VALUE_DTYPES, output_mode
from helpers.portable.ops import GELU_COEFF, GELU_SQRT_2_OVER_PI, GeluForm

# Rows up to this many run the small-M configurations (batch-1 shapes: too few row blocks of 128
# to fill the GPU), larger GEMMs the large tiles.
_SMALL_M = 256
_GROUP_M = 8
# The operand types and their accumulators.
_OPERAND_TYPES = (torch.int8, torch.float8_e4m3fn)


def _config(block_m: int, block_n: int, block_k: int, stages: int, warps: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}, num_stages=stages,
                         num_warps=warps)


CONFIGS = [
    # small M
    _config(64, 64, 128, 4, 4),
    _config(64, 128, 128, 4, 4),
    _config(64, 256, 128, 3, 4),
    # large M (BERT at batch ≥ 8)
    _config(128, 128, 128, 4, 8),
    _config(128, 256, 128, 3, 8),
    _config(256, 128, 128, 3, 8),
]


def _configs_for_rows(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    small = named_args["M"] <= _SMALL_M
    return [c for c in configs if (c.kwargs["BLOCK_M"] == 64) == small]


def _quick_bench(kernel_call: Callable[[], object], quantiles: tuple[float, ...]) -> list[float]:
    # Shorter than Triton's default (25 ms warm-up, 100 ms of runs): tuning happens on an engine's
    # first run, once per shape.
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


@triton.jit
def _gelu_tanh_approx(v, coeff, sqrt_2_over_pi):
    # The hardware tanh (one special-function instruction; PTX bounds its relative error by 2⁻¹¹)
    # for values rounded to FP16 / BF16 and quantized next: on BERT-large's FC1 with FP16 values it
    # moved 2 codes in 10⁷ and, with the cheaper rounding of ``common.int8_codes``, made the
    # GEMM 1.2x faster.
    u = sqrt_2_over_pi * (v + coeff * v * v * v)
    tanh = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [u], dtype=tl.float32, is_pure=True, pack=1)
    return 0.5 * v * (1.0 + tanh)


@triton.jit
def _tile_coords(tile, blocks_m, blocks_n, GROUP_M: tl.constexpr):
    # Row blocks in groups of GROUP_M per column sweep: neighbouring tiles share weight tiles in L2.
    per_group = GROUP_M * blocks_n
    first_m = (tile // per_group) * GROUP_M
    group_rows = tl.minimum(blocks_m - first_m, GROUP_M)
    return first_m + (tile % per_group) % group_rows, (tile % per_group) // group_rows


@triton.jit
def _zero_accumulator(FP8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # One return: Triton 3.6 merges the types of every return, even past a constexpr branch.
    if FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    return acc


@triton.jit
def _epilogue(
    acc, pid_m, pid_n, col_scale_ptr, bias_ptr, out_ptr, M, N, stride_out, out_scale, coeff, sqrt_2_over_pi,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, ERF: tl.constexpr, MODE: tl.constexpr, VALUE_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    in_cols = cols < N
    v = acc.to(tl.float32) * tl.load(col_scale_ptr + cols, mask=in_cols, other=0.0)[None, :]
    if HAS_BIAS:
        v = v + tl.load(bias_ptr + cols, mask=in_cols, other=0.0).to(tl.float32)[None, :]
    if GELU:
        if ERF:
            v = gelu_erf(v)
        elif MODE != 2 and VALUE_DTYPE != 0:
            v = _gelu_tanh_approx(v, coeff, sqrt_2_over_pi)
        else:
            v = gelu_tanh(v, coeff, sqrt_2_over_pi)
    out_ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_out + cols[None, :]
    in_range = (rows < M)[:, None] & in_cols[None, :]
    if MODE == 0:  # INT8_CODES
        tl.store(out_ptrs, int8_codes(rounded_to(v, VALUE_DTYPE), out_scale), mask=in_range)
    elif MODE == 1:  # FP8_CODES
        tl.store(out_ptrs, fp8_codes(rounded_to(v, VALUE_DTYPE), out_scale), mask=in_range)
    else:  # FLOAT_VALUES
        tl.store(out_ptrs, v.to(out_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _int8_gemm_kernel(
    a_ptr, w_ptr, col_scale_ptr, bias_ptr, out_ptr, M, N, K, stride_a, stride_w, stride_out, m_bucket,
    out_scale, coeff, sqrt_2_over_pi,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, ERF: tl.constexpr, MODE: tl.constexpr, VALUE_DTYPE: tl.constexpr,
    FP8: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    # Rows / columns past the end read valid ones (wrapped) and are never stored: no M / N masks.
    a_ptrs = a_ptr + (rows % M)[:, None].to(tl.int64) * stride_a + ks[None, :]
    w_ptrs = w_ptr + (cols % N)[None, :].to(tl.int64) * stride_w + ks[:, None]  # [BLOCK_K, BLOCK_N], K-major
    acc = dot_k_blocks(a_ptrs, w_ptrs, ks, K, _zero_accumulator(FP8, BLOCK_M, BLOCK_N), EVEN_K, BLOCK_K)
    _epilogue(acc, pid_m, pid_n, col_scale_ptr, bias_ptr, out_ptr, M, N, stride_out, out_scale, coeff,
              sqrt_2_over_pi, HAS_BIAS, GELU, ERF, MODE, VALUE_DTYPE, BLOCK_M, BLOCK_N)


@triton.jit
def _int8_gemm_tma_kernel(
    a_desc, w_desc, col_scale_ptr, bias_ptr, out_ptr, M, N, K, stride_out, m_bucket, out_scale, coeff,
    sqrt_2_over_pi,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, ERF: tl.constexpr, MODE: tl.constexpr, VALUE_DTYPE: tl.constexpr,
    FP8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PROGRAMS_PER_SM: tl.constexpr,
):
    # The operand tiles come through TMA (``a_desc`` [M, K], ``w_desc`` [N, K]), which fills reads
    # past M, N and K with zeros: no masks, no wrapped rows.  PROGRAMS_PER_SM > 0 (persistent): that
    # many programs per SM walk the tiles, so the loads of a tile's first K blocks overlap the
    # previous tile's epilogue; 0: one program per tile.
    blocks_m = tl.cdiv(M, BLOCK_M)
    blocks_n = tl.cdiv(N, BLOCK_N)
    if PROGRAMS_PER_SM > 0:
        step = tl.num_programs(0)
        # The epilogue's tile recomputed from its own counter: the flattened loop's pipeliner must
        # not carry the main loop's values across the tile boundary.
        stored = tl.program_id(0) - step
        for tile in tl.range(tl.program_id(0), blocks_m * blocks_n, step, flatten=True):
            pid_m, pid_n = _tile_coords(tile, blocks_m, blocks_n, GROUP_M)
            acc = _zero_accumulator(FP8, BLOCK_M, BLOCK_N)
            for start in tl.range(0, K, BLOCK_K):
                a = a_desc.load([pid_m * BLOCK_M, start])
                w = w_desc.load([pid_n * BLOCK_N, start])
                acc = tl.dot(a, w.T, acc, out_dtype=acc.dtype)
            stored += step
            out_m, out_n = _tile_coords(stored, blocks_m, blocks_n, GROUP_M)
            _epilogue(acc, out_m, out_n, col_scale_ptr, bias_ptr, out_ptr, M, N, stride_out, out_scale, coeff,
                      sqrt_2_over_pi, HAS_BIAS, GELU, ERF, MODE, VALUE_DTYPE, BLOCK_M, BLOCK_N)
    else:
        pid_m, pid_n = _tile_coords(tl.program_id(0), blocks_m, blocks_n, GROUP_M)
        acc = _zero_accumulator(FP8, BLOCK_M, BLOCK_N)
        for start in tl.range(0, K, BLOCK_K):
            a = a_desc.load([pid_m * BLOCK_M, start])
            w = w_desc.load([pid_n * BLOCK_N, start])
            acc = tl.dot(a, w.T, acc, out_dtype=acc.dtype)
        _epilogue(acc, pid_m, pid_n, col_scale_ptr, bias_ptr, out_ptr, M, N, stride_out, out_scale, coeff,
                  sqrt_2_over_pi, HAS_BIAS, GELU, ERF, MODE, VALUE_DTYPE, BLOCK_M, BLOCK_N)


_even_k = triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
_pinned_kernel = _even_k(_int8_gemm_kernel)
_tuned_kernel = triton.autotune(
    CONFIGS, key=["m_bucket", "N", "K"], prune_configs_by={"early_config_prune": _configs_for_rows},
    do_bench=_quick_bench,
)(_pinned_kernel)


def _set_block_shapes(nargs: dict) -> None:
    # A TMA descriptor's box is the kernel's tile: set per configuration, before each launch.
    nargs["a_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
    nargs["w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]


def _tma_config(block_m: int, block_n: int, block_k: int, stages: int, warps: int, programs_per_sm: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k,
                          "PROGRAMS_PER_SM": programs_per_sm}, num_stages=stages, num_warps=warps,
                         pre_hook=_set_block_shapes)


# The winners of a sweep on the H100 (BERT-large's four GEMMs at 16384 and 49152 rows, ten tilings:
# 128×128 / 128×256 / 256×128 tiles, K blocks 64 / 128, 3-6 stages, 4 / 8 warps, one program per
# tile or persistent with 1-2 per SM).  First by 5-15 % on every shape but one: 128×128 tiles of
# one warpgroup, persistent with two programs per SM (96 KB of stages each), so one program's
# epilogue runs while the other's tensor-core loop does.
TMA_CONFIGS = [
    _tma_config(128, 128, 128, 3, 4, 2),
    _tma_config(128, 256, 128, 3, 8, 1),
]
_tuned_tma_kernel = triton.autotune(TMA_CONFIGS, key=["m_bucket", "N", "K"], do_bench=_quick_bench)(
    _int8_gemm_tma_kernel)


def _tma_ready(t: torch.Tensor) -> bool:
    """TMA reads ``t`` (rows of 8-bit codes): 16-byte aligned base and row stride."""
    return t.data_ptr() % 16 == 0 and t.stride(0) % 16 == 0


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def int8_gemm_into(
    out: torch.Tensor,
    codes: torch.Tensor,
    weight_codes: torch.Tensor,
    col_scales: torch.Tensor,
    bias: torch.Tensor | None = None,
    gelu: bool = False,
    out_scale: float | None = None,
    value_dtype: torch.dtype | None = None,
    config: triton.Config | None = None,
    form: GeluForm = "tanh",
) -> None:
    """``out[M, N]`` from 8-bit ``codes [M, K]`` · ``weight_codes [N, K]``ᵀ (both int8, or both
    float8_e4m3fn), dequantized by the float32 ``col_scales [N]`` (+ float32 ``bias [N]``, then the
    GELU of ``form`` when ``gelu``).

    ``out`` float: the float values.  ``out`` int8: their codes on the INT8 grid of ``out_scale``;
    float8_e4m3fn: their E4M3 codes of ``out_scale`` (``value_dtype``: the float type the values
    are rounded to first).  ``config`` pins one of ``CONFIGS`` (the cp.async
    kernel) or ``TMA_CONFIGS`` (the TMA kernel) instead of tuning; unpinned, more than ``_SMALL_M``
    rows with TMA-aligned operands and a 1- or 2-byte output run the TMA kernel.
    """
    m, k = codes.shape
    n = weight_codes.shape[0]
    if weight_codes.shape[1] != k or out.shape != (m, n) or codes.stride(1) != 1 or weight_codes.stride(1) != 1 \
            or out.stride(1) != 1:
        raise ValueError(f"int8_gemm_into: shapes {tuple(codes.shape)} x {tuple(weight_codes.shape)} -> {tuple(out.shape)}")
    if codes.dtype not in _OPERAND_TYPES or weight_codes.dtype != codes.dtype:
        raise ValueError(f"int8_gemm_into: operands {codes.dtype} x {weight_codes.dtype}, not both int8 or both FP8")
    if m == 0 or n == 0:
        return
    mode = output_mode(out)
    if (mode != FLOAT_VALUES) != (out_scale is not None) or (out_scale is not None and value_dtype is None):
        raise ValueError("int8_gemm_into: an 8-bit output, and only that, needs out_scale and value_dtype")
    value_dtype = value_dtype or out.dtype
    # Tuned once per (power-of-two row bucket, N, K): every M ≥ 4096 shares the large-M choice.
    m_bucket = triton.next_power_of_2(min(m, 4096))
    epilogue = (col_scales, bias if bias is not None else col_scales, out)
    scalars = (1.0 if out_scale is None else float(out_scale), GELU_COEFF, GELU_SQRT_2_OVER_PI)
    flags = {"HAS_BIAS": bias is not None, "GELU": gelu, "ERF": form == "erf", "MODE": mode,
             "VALUE_DTYPE": VALUE_DTYPES[value_dtype], "FP8": codes.dtype == torch.float8_e4m3fn, "GROUP_M": _GROUP_M}
    # float32 tiles of the TMA kernel's large tiles need more shared memory for the epilogue's
    # layout change than the operand stages leave: float32 output takes the cp.async kernel.
    tma_possible = out.element_size() <= 2 and _tma_ready(codes) and _tma_ready(weight_codes)
    tma = m > _SMALL_M and tma_possible if config is None else "PROGRAMS_PER_SM" in config.kwargs
    if tma and not tma_possible:
        raise ValueError("int8_gemm_into: a TMA configuration needs aligned operands and a 1- or 2-byte output")
    if tma:
        sms = _num_sms(codes.device)

        def tma_grid(meta: dict) -> tuple[int]:
            tiles = triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])
            return (min(tiles, sms * meta["PROGRAMS_PER_SM"]) if meta["PROGRAMS_PER_SM"] else tiles,)

        # Block shapes are placeholders until ``_set_block_shapes`` runs for the chosen configuration.
        descriptors = (TensorDescriptor(codes, [m, k], [codes.stride(0), 1], [64, 64]),
                       TensorDescriptor(weight_codes, [n, k], [weight_codes.stride(0), 1], [64, 64]))
        tma_args = (*descriptors, *epilogue, m, n, k, out.stride(0), m_bucket, *scalars)
        if config is None:
            _tuned_tma_kernel[tma_grid](*tma_args, **flags)
        else:
            _set_block_shapes({"a_desc": descriptors[0], "w_desc": descriptors[1], **config.kwargs})
            _int8_gemm_tma_kernel[tma_grid](*tma_args, **flags, **config.all_kwargs())
        return

    args = (codes, weight_codes, *epilogue, m, n, k, codes.stride(0), weight_codes.stride(0), out.stride(0), m_bucket,
            *scalars)

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    if config is None:
        _tuned_kernel[grid](*args, **flags)
    else:
        _pinned_kernel[grid](*args, **flags, **config.all_kwargs())
