"""Triton FP16 GEMM for few rows (batch-1 token counts), launched with programmatic dependent launch.

``out[M, N] = rows[M, K] @ weight[N, K]ᵀ (+ bias) (→ GELU, tanh or exact erf)`` with float32
accumulation and the epilogue in float32 registers, or, split over K, the float32 partial products
``[S, M, N]`` that the following skip-LayerNorm sums (``norms.skip_layernorm_into(..., splits=S)``):
no reduction launch.

At a few hundred rows a GEMM is bound by the latency of starting to stream its weight from HBM,
not by bandwidth (docs/perf/KERNELS.md).  Under PDL (``kernels.pdl``) each program first lets the
next kernel launch, then waits for the previous one: a chain of these kernels skips the launch
gaps, and the next kernel's programs are resident when this one ends.  Before its wait, a GEMM
whose weight is at most ``PREFETCH_MAX_WEIGHT_BYTES`` asks the TMA unit to prefetch its weight
slab into L2 (``cp.async.bulk.prefetch``), so its first reads overlap the previous kernel; larger
weights' prefetches slowed the chain (docs/perf/KERNELS.md, "Batch 1: PDL chain").

Two kernels of one grid and contract: operand tiles through TMA descriptors (``Config.tma``, the
sweep's winner on every BERT shape: up to 19 % faster per GEMM at 128 rows), or cp.async pointer
loads, which also take operands TMA cannot (rows or base not 16-byte aligned).  Tile
configurations per (N, K, row bucket) are the winners of ``bench/batch1_latency.py --sweep`` on the
H100; other shapes take the (pointer) defaults.  Imported lazily: Triton exists only on GPU machines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from helpers.portable.kernels.common import dot_k_blocks, gelu_erf, gelu_tanh
from helpers.portable.kernels.pdl import pdl_launch
from helpers.portable.ops import GELU_COEFF, GELU_SQRT_2_OVER_PI, GeluForm


@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    block_k: int
    split_k: int  # K splits of a partial-products launch (1 for a finished result)
    warps: int
    stages: int
    tma: bool = False  # operand tiles through TMA descriptors instead of cp.async pointer loads


DEFAULT_CONFIG = Config(64, 64, 128, 1, 4, 4)
DEFAULT_PARTIALS_CONFIG = Config(64, 64, 128, 4, 4, 4)
ROW_BUCKETS = (128, 384)
# (N, K, row bucket, partials) → the sweep's winner: every one reads through TMA.
CONFIGS: dict[tuple[int, int, int, bool], Config] = {
    (768, 768, 128, True): Config(64, 64, 128, 4, 4, 4, True),
    (768, 768, 384, True): Config(64, 64, 128, 1, 4, 4, True),
    (768, 3072, 128, True): Config(64, 64, 128, 4, 4, 4, True),
    (768, 3072, 384, True): Config(128, 64, 64, 4, 4, 4, True),
    (1024, 1024, 128, True): Config(64, 64, 128, 4, 4, 4, True),
    (1024, 1024, 384, True): Config(64, 64, 64, 2, 4, 4, True),
    (1024, 4096, 128, True): Config(64, 64, 128, 4, 4, 4, True),
    (1024, 4096, 384, True): Config(128, 128, 64, 4, 4, 4, True),
    (2304, 768, 128, False): Config(64, 64, 128, 1, 4, 4, True),
    (2304, 768, 384, False): Config(64, 128, 128, 1, 4, 3, True),
    (3072, 768, 128, False): Config(64, 64, 128, 1, 4, 4, True),
    (3072, 768, 384, False): Config(64, 64, 64, 1, 4, 4, True),
    (3072, 1024, 128, False): Config(64, 64, 128, 1, 4, 4, True),
    (3072, 1024, 384, False): Config(128, 128, 64, 1, 8, 4, True),
    (4096, 1024, 128, False): Config(64, 64, 128, 1, 4, 4, True),
    (4096, 1024, 384, False): Config(128, 128, 64, 1, 8, 4, True),
}


def row_bucket(m: int) -> int:
    return next((bucket for bucket in ROW_BUCKETS if m <= bucket), ROW_BUCKETS[-1])


def config_for(m: int, n: int, k: int, partials: bool) -> Config:
    default = DEFAULT_PARTIALS_CONFIG if partials else DEFAULT_CONFIG
    return CONFIGS.get((n, k, row_bucket(m), partials), default)


# End to end under PDL (BERT 128 × 1, CUDA graph): prefetching every weight made base 3 % faster and
# large 2 % slower; prefetching those up to 5 MiB (all of base's, large's attention-output one)
# made base 3.3 % and large 0.8 % faster.
PREFETCH_MAX_WEIGHT_BYTES = 5 << 20


@triton.jit
def _prefetch_rows_to_l2(row_ptrs, nbytes):
    # One bulk prefetch per weight row of the slab (sm_90+); no result.
    tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2; // $0", "=r,l,r", [row_ptrs, nbytes],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _begin(w_ptr, N, K, stride_w, k_per_split, USE_PDL: tl.constexpr, PREFETCH: tl.constexpr,
           BLOCK_N: tl.constexpr):
    """The program's row block, column block, K split, columns and K slice (start, length); under
    PDL it first lets the next kernel launch, then waits for the previous one."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    pid_m = tl.program_id(2)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_begin = split * k_per_split
    k_len = tl.minimum(K - k_begin, k_per_split)
    if USE_PDL:
        if PREFETCH and pid_m == 0:
            # Weights only (the contract of kernels.pdl): this program's slab, asked for once per
            # column block and K split, by the first row block's program.
            _prefetch_rows_to_l2(w_ptr + (cols % N).to(tl.int64) * stride_w + k_begin,
                                 tl.full([BLOCK_N], 0, tl.int32) + k_len * 2)
        tl.extra.cuda.gdc_wait()
    return pid_m, pid_n, split, cols, k_begin, k_len


@triton.jit
def _few_rows_gemm_kernel(
    a_ptr, w_ptr, bias_ptr, out_ptr, M, N, K, stride_a, stride_w, k_per_split, coeff, sqrt_2_over_pi,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, ERF: tl.constexpr, PARTIALS: tl.constexpr, USE_PDL: tl.constexpr,
    PREFETCH: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m, pid_n, split, cols, k_begin, k_len = _begin(w_ptr, N, K, stride_w, k_per_split, USE_PDL, PREFETCH,
                                                      BLOCK_N)
    # Columns past N read valid weight rows (wrapped) and are never stored: no N mask on loads.
    w_rows = (cols % N).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + (rows % M)[:, None].to(tl.int64) * stride_a + (k_begin + ks)[None, :]
    w_ptrs = w_ptr + w_rows[None, :] * stride_w + (k_begin + ks)[:, None]  # [BLOCK_K, BLOCK_N], K-major
    acc = dot_k_blocks(a_ptrs, w_ptrs, ks, k_len, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), EVEN_K, BLOCK_K)
    _store(acc, rows, cols, split, bias_ptr, out_ptr, M, N, coeff, sqrt_2_over_pi, HAS_BIAS, GELU, ERF, PARTIALS)


@triton.jit
def _store(acc, rows, cols, split, bias_ptr, out_ptr, M, N, coeff, sqrt_2_over_pi, HAS_BIAS: tl.constexpr,
           GELU: tl.constexpr, ERF: tl.constexpr, PARTIALS: tl.constexpr):
    in_cols = cols < N
    in_range = (rows < M)[:, None] & in_cols[None, :]
    offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
    if PARTIALS:
        tl.store(out_ptr + split.to(tl.int64) * M * N + offsets, acc, mask=in_range)
    else:
        v = acc
        if HAS_BIAS:
            v += tl.load(bias_ptr + cols, mask=in_cols, other=0.0).to(tl.float32)[None, :]
        if GELU:
            if ERF:
                v = gelu_erf(v)
            else:
                v = gelu_tanh(v, coeff, sqrt_2_over_pi)
        tl.store(out_ptr + offsets, v.to(out_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _few_rows_gemm_tma_kernel(
    a_desc, w_desc, w_ptr, bias_ptr, out_ptr, M, N, K, stride_w, k_per_split, coeff, sqrt_2_over_pi,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, ERF: tl.constexpr, PARTIALS: tl.constexpr, USE_PDL: tl.constexpr,
    PREFETCH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # The pointer kernel's grid and PDL contract, with the tiles read through TMA descriptors
    # (``a_desc`` [M, K], ``w_desc`` [N, K]), which fill reads past M, N and K with zeros.
    pid_m, pid_n, split, cols, k_begin, k_len = _begin(w_ptr, N, K, stride_w, k_per_split, USE_PDL, PREFETCH,
                                                      BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in tl.range(k_begin, k_begin + k_len, BLOCK_K):
        a = a_desc.load([pid_m * BLOCK_M, start])
        w = w_desc.load([pid_n * BLOCK_N, start])
        acc = tl.dot(a, w.T, acc)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    _store(acc, rows, cols, split, bias_ptr, out_ptr, M, N, coeff, sqrt_2_over_pi, HAS_BIAS, GELU, ERF, PARTIALS)


def _check(rows: torch.Tensor, weight: torch.Tensor) -> None:
    if (rows.dim() != 2 or weight.dim() != 2 or rows.shape[1] != weight.shape[1] or rows.dtype != torch.float16
            or weight.dtype != torch.float16 or rows.stride(1) != 1 or not weight.is_contiguous()):
        raise ValueError(f"few_rows_gemm: needs float16 rows [M, K] with unit column stride and a contiguous float16 "
                         f"weight [N, K]; got {rows.dtype} {tuple(rows.shape)} x {weight.dtype} {tuple(weight.shape)}")


def _prefetches(weight: torch.Tensor) -> bool:
    """Whether the GEMM prefetches ``weight`` under PDL (which implies sm_90, where the bulk prefetch
    exists): small enough, and rows the bulk prefetch takes (16-byte aligned, a multiple of 16
    bytes: every K split spans a multiple of block_k)."""
    n, k = weight.shape
    return n * k * weight.element_size() <= PREFETCH_MAX_WEIGHT_BYTES and k % 8 == 0 and weight.data_ptr() % 16 == 0


def _tma_ready(t: torch.Tensor) -> bool:
    """TMA reads ``t`` (rows of float16): 16-byte aligned base and row stride."""
    return t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0


def _launch(out: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool,
            form: GeluForm, config: Config, splits: int, k_per_split: int, pdl: bool) -> None:
    m, k = rows.shape
    n = weight.shape[0]
    grid = (triton.cdiv(n, config.block_n), splits, triton.cdiv(m, config.block_m))
    flags = dict(HAS_BIAS=bias is not None, GELU=gelu, ERF=form == "erf", PARTIALS=out.dtype == torch.float32,
                 PREFETCH=_prefetches(weight), BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                 num_warps=config.warps, num_stages=config.stages, **pdl_launch(rows.device, m, pdl))
    bias_or_any = bias if bias is not None else weight
    if config.tma and _tma_ready(rows) and _tma_ready(weight):
        descriptors = (TensorDescriptor(rows, [m, k], [rows.stride(0), 1], [config.block_m, config.block_k]),
                       TensorDescriptor(weight, [n, k], [k, 1], [config.block_n, config.block_k]))
        _few_rows_gemm_tma_kernel[grid](*descriptors, weight, bias_or_any, out, m, n, k, k, k_per_split, GELU_COEFF,
                                        GELU_SQRT_2_OVER_PI, **flags)
        return
    _few_rows_gemm_kernel[grid](
        rows, weight, bias_or_any, out, m, n, k, rows.stride(0), weight.stride(0), k_per_split, GELU_COEFF,
        GELU_SQRT_2_OVER_PI, EVEN_K=k % config.block_k == 0, **flags)


def linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False,
           config: Config | None = None, pdl: bool = True, form: GeluForm = "tanh") -> torch.Tensor:
    """``gelu?(rows @ weightᵀ + bias)`` as a new contiguous float16 [M, N], the GELU of ``form``;
    ``bias`` [N] float16 or float32; ``config`` (split_k 1) pins a tile configuration instead of the
    table's; ``pdl``: launched under PDL where ``pdl.pdl_launch`` allows."""
    _check(rows, weight)
    m, k = rows.shape
    n = weight.shape[0]
    config = config or config_for(m, n, k, partials=False)
    if config.split_k != 1:
        raise ValueError("few_rows_gemm.linear: a finished result takes split_k 1 (see partial_products)")
    out = torch.empty(m, n, dtype=torch.float16, device=rows.device)
    if m and n:
        _launch(out, rows, weight, bias, gelu, form, config, 1, max(k, 1), pdl)
    return out


def partial_products(rows: torch.Tensor, weight: torch.Tensor, config: Config | None = None,
                     pdl: bool = True) -> torch.Tensor:
    """``rows @ weightᵀ`` as float32 partial products [S, M, N] over S ≤ ``config.split_k`` slices of
    K (their sum is the product); every slice but the last spans a multiple of ``block_k``."""
    _check(rows, weight)
    m, k = rows.shape
    n = weight.shape[0]
    config = config or config_for(m, n, k, partials=True)
    k_per_split = max(config.block_k, triton.cdiv(triton.cdiv(k, config.split_k), config.block_k) * config.block_k)
    splits = max(1, triton.cdiv(k, k_per_split))
    out = torch.empty(splits, m, n, dtype=torch.float32, device=rows.device)
    if m and n:
        _launch(out, rows, weight, None, False, "tanh", config, splits, k_per_split, pdl)
    return out
