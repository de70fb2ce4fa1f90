"""Triton attention for few (sequence, head) pairs, straight on the packed QKV layout.

At batch 1 cuDNN's SDPA runs one program per head (16 for BERT-large), so most SMs idle and the
kernel's time is the latency of one head's work.  Here the grid is query blocks × sequences ×
heads: each program takes BLOCK_M queries of one head and walks that head's keys in BLOCK_N tiles
(at most four at S ≤ 512) with an online softmax in float32, reading Q, K and V from the
``[S, B, 3E]`` tensor (per token ``[head][q|k|v][head_size]``) and writing ``[S, B, E]``.
Programmatic dependent launch per ``helpers.portable.kernels.pdl``.  Imported lazily by
``helpers.portable.kernels.attention`` because Triton exists only on GPU machines.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from helpers.portable.kernels.pdl import pdl_launch

LOG2E = tl.constexpr(1.4426950408889634)


class Tiles(NamedTuple):
    block_m: int
    block_n: int
    warps: int
    stages: int


def default_tiles(seq_len: int, pairs: int, sm_count: int) -> Tiles:
    """Tiles for ``pairs`` = batch × heads of ``seq_len`` tokens (bench sweep, H100): 16-query
    blocks while they still fit in one wave of ``sm_count`` programs (S = 128, one sequence of 12
    or 16 heads: 3.2 µs against 3.8 µs with 64), 64-query blocks otherwise (S = 384, batch 1:
    6.9 µs against 8.0 with 16); 128-key tiles, two stages."""
    block_m = 16 if pairs * triton.cdiv(seq_len, 16) <= sm_count else 64
    return Tiles(block_m, 128, 4, 2)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@triton.jit
def _attention_kernel(
    qkv_ptr, bias_ptr, out_ptr, seq_len, heads, head_size, scale_log2,
    qkv_stride_s, qkv_stride_b, bias_stride_b, bias_stride_s, out_stride_s, out_stride_b,
    HAS_BIAS: tl.constexpr, USE_PDL: tl.constexpr, HEAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pair = tl.program_id(1)
    b = (pair // heads).to(tl.int64)
    n = pair % heads
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HEAD)
    row_ok = rows < seq_len
    col_ok = cols < head_size
    q_base = qkv_ptr + b * qkv_stride_b + n * 3 * head_size
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    q = tl.load(q_base + rows[:, None] * qkv_stride_s + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                other=0.0)
    if USE_PDL:
        # The whole grid is resident at these sizes: the next kernel may take the free SMs now.
        tl.extra.cuda.gdc_launch_dependents()
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD], tl.float32)
    for start in tl.range(0, seq_len, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_ok = keys < seq_len
        kv_mask = key_ok[:, None] & col_ok[None, :]
        kv_offsets = keys[:, None] * qkv_stride_s + cols[None, :]
        k = tl.load(q_base + head_size + kv_offsets, mask=kv_mask, other=0.0)
        v = tl.load(q_base + 2 * head_size + kv_offsets, mask=kv_mask, other=0.0)
        # Scores in log2 units: exp2 of (q·k / sqrt(H) + bias) · log2(e).
        scores = tl.dot(q, tl.trans(k)) * scale_log2
        if HAS_BIAS:
            key_bias = tl.load(bias_ptr + b * bias_stride_b + keys * bias_stride_s, mask=key_ok, other=float("-inf"))
            scores += key_bias.to(tl.float32)[None, :] * LOG2E
        else:
            scores = tl.where(key_ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        # A row with no valid key so far keeps m = -inf; shift by 0 so exp2 gives 0, not NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(scores - shift[:, None])
        alpha = tl.math.exp2(m_i - shift)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    # Rows whose keys are all masked come out as zeros, like the reference.
    ctx = tl.where(l_i[:, None] > 0.0, acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None], 0.0)
    out_ptrs = out_ptr + b * out_stride_b + n * head_size + rows[:, None] * out_stride_s + cols[None, :]
    tl.store(out_ptrs, ctx.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def attention_small(
    qkv: torch.Tensor, key_bias: torch.Tensor | None, num_heads: int, tiles: Tiles | None = None,
    use_pdl: bool | None = None,
) -> torch.Tensor:
    """``attention.attention_fixed_biased`` on this kernel: ``qkv`` [S, B, 3E] (any S and B strides,
    unit stride along 3E), ``key_bias`` None or additive [B or 1, 1, 1, S]; returns [S, B, E].

    ``tiles`` defaults to ``default_tiles``; ``use_pdl`` to the batch-1 chain's rule over the S × B token
    rows (``pdl.pdl_launch``).
    """
    seq_len, batch, width = qkv.shape
    head_size = width // (3 * num_heads)
    if qkv.stride(2) != 1:
        qkv = qkv.contiguous()
    out = torch.empty(seq_len, batch, num_heads * head_size, dtype=qkv.dtype, device=qkv.device)
    if out.numel() == 0:
        return out
    if tiles is None:
        device_index = qkv.device.index if qkv.device.index is not None else torch.cuda.current_device()
        tiles = default_tiles(seq_len, batch * num_heads, _sm_count(device_index))
    if use_pdl is None:
        use_pdl = pdl_launch(qkv.device, seq_len * batch)["launch_pdl"]
    bias = qkv if key_bias is None else key_bias.expand(batch, 1, 1, seq_len)
    bias_strides = (0, 0) if key_bias is None else (bias.stride(0), bias.stride(3))
    grid = (triton.cdiv(seq_len, tiles.block_m), batch * num_heads)
    _attention_kernel[grid](
        qkv, bias, out, seq_len, num_heads, head_size, LOG2E.value / math.sqrt(head_size),
        qkv.stride(0), qkv.stride(1), *bias_strides, out.stride(0), out.stride(1),
        HAS_BIAS=key_bias is not None, USE_PDL=use_pdl, HEAD=max(16, triton.next_power_of_2(head_size)),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, num_warps=tiles.warps, num_stages=tiles.stages,
        launch_pdl=use_pdl,
    )
    return out
