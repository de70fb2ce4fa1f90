"""Triton fused INT8 attention: the ``-imh`` QKV-to-context plugin (``type_id`` INT8) on CUDA.

The reference is ``quantization.int8_attention``: Q·Kᵀ on the int8 codes (exact int32), scaled by
``s_qkv² / √H``; softmax in float32; the probabilities quantized with step ``dq_probs`` to codes
0…127; P·V on the codes (exact int32), scaled by ``dq_probs · s_qkv``; the context written on the
INT8 grid of ``ctx_scale`` (as its codes, its values, or the FP8 E4M3 codes of those values when an
FP8 GEMM reads the context).  Q·Kᵀ runs on the int8 tensor cores, P·V on the FP16 ones with the
same exact integer result (``_times_v``).

One program takes ``BLOCK_M`` queries of one (sequence, head).  When all keys fit in one block
the scores are made once; otherwise it walks the keys twice: first for each row's maximum and sum
of exponentials, then for the probabilities, which can only be quantized once that sum is known,
and their product with V.  The walks stop at the sequence's last valid key, and only the block
holding it masks; the scale and the row's shift meet the integer dot in one fused multiply-add.
The exponentials use ``exp2`` (the hardware's), so a probability may differ from PyTorch's in its
last bits and, at a tie, move its code by one; that query's context then moves by at most
``127 · dq_probs · s_qkv / s_ctx`` steps of its grid (plus one for its own rounding), which is rare
(about 1 output in 10⁵ on BERT-large's shapes).  Imported lazily: Triton exists only on GPU machines.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from helpers.portable.kernels.common import ROUNDING_SHIFT, ROUNDING_SHIFT_BITS, int8_grid
from helpers.portable.kernels.quant_kernels import FP8_CODES, VALUE_DTYPES, output_mode, store_int8_value


@triton.jit
def _load_codes(ptrs, mask, scale, CODES: tl.constexpr, MASKED: tl.constexpr = True):
    """int8 codes of a [rows, dims] tile: read as they are, or quantized from float values;
    ``mask`` is ignored unless ``MASKED``."""
    if MASKED:
        values = tl.load(ptrs, mask=mask, other=0)
    else:
        values = tl.load(ptrs)
    if CODES:
        return values
    return int8_grid(values.to(tl.float32), scale).to(tl.int8)


@triton.jit
def _load_key_codes(ptrs, key_ok, dim_ok, scale, CODES: tl.constexpr, MASKED: tl.constexpr,
                    EVEN_HEAD: tl.constexpr):
    """A K or V tile's codes (``key_ok`` / ``dim_ok`` broadcast to its shape): masked by key only in
    the block holding the last valid key, by dimension only where the head is narrower than its tile."""
    if MASKED:
        return _load_codes(ptrs, key_ok & dim_ok, scale, CODES)
    if EVEN_HEAD:
        return _load_codes(ptrs, None, scale, CODES, False)
    return _load_codes(ptrs, dim_ok, scale, CODES)


# The kernel is bound by instructions per score, not by its tensor cores: the conversion unit (16
# per clock per SM, like the exponential's) is kept for exp2 alone.  Integers become floats by bit
# arithmetic: i + 1.5·2²³ (|i| < 2²²) is a float32 whose low bits hold i, and 1536 + c (|c| ≤ 128)
# an FP16 whose low bits hold c.
_HALF_SHIFT = tl.constexpr(1536.0)
_HALF_SHIFT_BITS = tl.constexpr(0x6600)


@triton.jit
def _int32_to_float(x):
    """int32 ``x`` with |x| < 2²² as float32, exactly."""
    return (x + ROUNDING_SHIFT_BITS).to(tl.float32, bitcast=True) - ROUNDING_SHIFT


@triton.jit
def _int16_to_half(x):
    """int16 ``x`` in [-128, 128] as float16, exactly."""
    return ((x + _HALF_SHIFT_BITS).to(tl.float16, bitcast=True) - _HALF_SHIFT).to(tl.float16)


@triton.jit
def _dots(q, qkv_ptr, keys, key_rows, k_cols, in_head, valid, qkv_scale, QKV_CODES: tl.constexpr,
          MASKED: tl.constexpr, EVEN_HEAD: tl.constexpr):
    """Q·Kᵀ [BLOCK_M, BLOCK_N] of the keys ``keys`` as exact float32, unscaled; when ``MASKED``
    (only the block holding the last valid key), -inf past the valid ones."""
    # K read as a [dims, keys] tile, contiguous along dims: the operand layout of int8 tensor cores.
    k = _load_key_codes(qkv_ptr + key_rows[None, :] + k_cols[:, None], (keys < valid)[None, :], in_head[:, None],
                        qkv_scale, QKV_CODES, MASKED, EVEN_HEAD)
    # |q·k| ≤ H · 128² < 2²² (MAX_HEAD_SIZE).
    dots = _int32_to_float(tl.dot(q, k, out_dtype=tl.int32))
    if MASKED:
        dots = tl.where((keys < valid)[None, :], dots, float("-inf"))
    return dots


@triton.jit
def _exps(dots, score_scale, shift):
    """2^(dots · score_scale - shift): the log2-scaled score and its shift in one fused multiply-add
    (-inf dots give 0)."""
    return tl.exp2(dots * score_scale - shift[:, None])


@triton.jit
def _times_v(context, exps, inv_sum, qkv_ptr, key_rows, v_cols, keys, in_head, valid, qkv_scale,
             QKV_CODES: tl.constexpr, CLAMP: tl.constexpr, MASKED: tl.constexpr, EVEN_HEAD: tl.constexpr):
    """``context`` + (probability codes of ``exps · inv_sum``) · (V codes of ``keys``)."""
    # Probability / dq_probs rounded half to even into 0…127 (common.int8_codes' way; the
    # clamp only where 1 / dq_probs would round above 127), the float32 bits M + code turned by one
    # subtraction into the FP16 bits of 1536 + code.
    steps = exps * inv_sum[:, None]
    if CLAMP:
        steps = tl.minimum(steps, 127.0)
    half_bits = ((steps + ROUNDING_SHIFT).to(tl.int32, bitcast=True) - (ROUNDING_SHIFT_BITS - _HALF_SHIFT_BITS))
    prob_codes = (half_bits.to(tl.int16).to(tl.float16, bitcast=True) - _HALF_SHIFT).to(tl.float16)
    v = _load_key_codes(qkv_ptr + key_rows[:, None] + v_cols[None, :], (keys < valid)[:, None], in_head[None, :],
                        qkv_scale, QKV_CODES, MASKED, EVEN_HEAD)
    # On FP16 tensor cores: codes and their products are exact there, and the sums stay below 2²⁴
    # (S · 127 · 127, MAX_SEQ_LEN), exact in the float32 accumulator: the int32 result, while V's
    # layout (dims contiguous) is one Hopper's int8 instructions cannot read as this operand.
    return tl.dot(prob_codes, _int16_to_half(v.to(tl.int16)), context)


@triton.jit
def _key_rows(start, seq, batch, width, BLOCK_N: tl.constexpr):
    """Keys ``start`` … ``start + BLOCK_N - 1`` of sequence ``seq`` and their rows' offsets in qkv."""
    keys = start + tl.arange(0, BLOCK_N)
    return keys, (keys.to(tl.int64) * batch + seq) * width


@triton.jit
def _sum_block(row_max, row_sum, q, qkv_ptr, start, seq, batch, width, k_cols, in_head, valid, qkv_scale,
               score_scale, QKV_CODES: tl.constexpr, MASKED: tl.constexpr, EVEN_HEAD: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """The first walk's step: each row's maximum dot and sum of exponentials, with one more block."""
    keys, key_rows = _key_rows(start, seq, batch, width, BLOCK_N)
    dots = _dots(q, qkv_ptr, keys, key_rows, k_cols, in_head, valid, qkv_scale, QKV_CODES, MASKED, EVEN_HEAD)
    new_max = tl.maximum(row_max, tl.max(dots, axis=1))
    # A row with no valid key yet keeps -inf: shift by 0 there, so no inf - inf.
    shift = tl.where(new_max == float("-inf"), 0.0, new_max * score_scale)
    row_sum = row_sum * tl.exp2(row_max * score_scale - shift) + tl.sum(_exps(dots, score_scale, shift), axis=1)
    return new_max, row_sum


@triton.jit
def _context_block(context, shift, inv_sum, q, qkv_ptr, start, seq, batch, width, k_cols, v_cols, in_head, valid,
                   qkv_scale, score_scale, QKV_CODES: tl.constexpr, CLAMP: tl.constexpr, MASKED: tl.constexpr,
                   EVEN_HEAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """The second walk's step: one more block's probability codes times its V codes."""
    keys, key_rows = _key_rows(start, seq, batch, width, BLOCK_N)
    dots = _dots(q, qkv_ptr, keys, key_rows, k_cols, in_head, valid, qkv_scale, QKV_CODES, MASKED, EVEN_HEAD)
    return _times_v(context, _exps(dots, score_scale, shift), inv_sum, qkv_ptr, key_rows, v_cols, keys, in_head,
                    valid, qkv_scale, QKV_CODES, CLAMP, MASKED, EVEN_HEAD)


@triton.jit
def _int8_attention_kernel(
    qkv_ptr, mask_ptr, out_ptr, seq_len, batch, qkv_scale, score_scale, inv_dq_probs, pv_scale, out_scale, fp8_scale,
    HEADS: tl.constexpr, HEAD: tl.constexpr, HEAD_BLOCK: tl.constexpr, HAS_MASK: tl.constexpr,
    QKV_CODES: tl.constexpr, OUT: tl.constexpr, VALUE_DTYPE: tl.constexpr, CLAMP: tl.constexpr,
    ONE_KEY_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0) // HEADS
    head = tl.program_id(0) % HEADS
    queries = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_BLOCK)
    in_head = dims < HEAD
    EVEN_HEAD: tl.constexpr = HEAD == HEAD_BLOCK
    # Token (s, b) is row s·B + b of [S, B, 3E]; head n's q | k | v are its columns 3Hn + [0, H, 2H).
    width = 3 * HEADS * HEAD
    q_cols = head * 3 * HEAD + dims
    k_cols = q_cols + HEAD
    v_cols = q_cols + 2 * HEAD
    q_rows = (queries.to(tl.int64) * batch + seq) * width
    q = _load_codes(qkv_ptr + q_rows[:, None] + q_cols[None, :], (queries < seq_len)[:, None] & in_head[None, :],
                    qkv_scale, QKV_CODES)
    valid = seq_len
    if HAS_MASK:
        valid = tl.minimum(tl.load(mask_ptr + seq), seq_len)

    # Keys past the valid ones have probability 0: the walks stop at the last valid key, and only
    # the block holding it masks its keys.
    context = tl.zeros([BLOCK_M, HEAD_BLOCK], tl.float32)
    if ONE_KEY_BLOCK:  # all keys in one block: the dots and exponentials are made once
        keys, key_rows = _key_rows(0, seq, batch, width, BLOCK_N)
        dots = _dots(q, qkv_ptr, keys, key_rows, k_cols, in_head, valid, qkv_scale, QKV_CODES, True, EVEN_HEAD)
        row_max = tl.max(dots, axis=1)
        shift = tl.where(row_max == float("-inf"), 0.0, row_max * score_scale)
        exps = _exps(dots, score_scale, shift)
        row_sum = tl.sum(exps, axis=1)
        # A sequence with no valid key has probabilities 0 (the reference's NaN → 0): context 0.
        inv_sum = tl.where(row_sum > 0.0, inv_dq_probs / row_sum, 0.0)
        context = _times_v(context, exps, inv_sum, qkv_ptr, key_rows, v_cols, keys, in_head, valid, qkv_scale,
                           QKV_CODES, CLAMP, True, EVEN_HEAD)
    else:
        full_end = (valid // BLOCK_N) * BLOCK_N
        row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_M], tl.float32)
        for start in range(0, full_end, BLOCK_N):
            row_max, row_sum = _sum_block(row_max, row_sum, q, qkv_ptr, start, seq, batch, width, k_cols, in_head,
                                          valid, qkv_scale, score_scale, QKV_CODES, False, EVEN_HEAD, BLOCK_N)
        if full_end < valid:
            row_max, row_sum = _sum_block(row_max, row_sum, q, qkv_ptr, full_end, seq, batch, width, k_cols, in_head,
                                          valid, qkv_scale, score_scale, QKV_CODES, True, EVEN_HEAD, BLOCK_N)
        shift = tl.where(row_max == float("-inf"), 0.0, row_max * score_scale)
        inv_sum = tl.where(row_sum > 0.0, inv_dq_probs / row_sum, 0.0)
        for start in range(0, full_end, BLOCK_N):
            context = _context_block(context, shift, inv_sum, q, qkv_ptr, start, seq, batch, width, k_cols, v_cols,
                                     in_head, valid, qkv_scale, score_scale, QKV_CODES, CLAMP, False, EVEN_HEAD,
                                     BLOCK_N)
        if full_end < valid:
            context = _context_block(context, shift, inv_sum, q, qkv_ptr, full_end, seq, batch, width, k_cols, v_cols,
                                     in_head, valid, qkv_scale, score_scale, QKV_CODES, CLAMP, True, EVEN_HEAD,
                                     BLOCK_N)

    values = context * pv_scale
    out_ptrs = out_ptr + (queries.to(tl.int64) * batch + seq)[:, None] * (HEADS * HEAD) + (head * HEAD + dims)[None, :]
    out_mask = (queries < seq_len)[:, None] & in_head[None, :]
    tl.store(out_ptrs, store_int8_value(values, out_scale, fp8_scale, OUT, VALUE_DTYPE, out_ptr), mask=out_mask)


MAX_SEQ_LEN = 1040  # P·V's sums reach S · 127 · 127, exact in float32 below 2²⁴
MAX_HEAD_SIZE = 255  # Q·K's sums reach H · 128², turned into floats exactly below 2²²


def attention_blocks(seq_len: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, warps): the winners of a sweep on the H100 (``bench/int8_speed.py
    --attention``, BERT-large at batch 128): all keys in one block up to 128, else two passes over
    blocks of 64 (one block of 512 keys spills registers)."""
    return (64, 128, 4) if seq_len <= 128 else (128, 64, 8)


def int8_attention_into(
    out: torch.Tensor, qkv: torch.Tensor, mask_idx: torch.Tensor | None, num_heads: int, qkv_scale: float,
    ctx_scale: float, dq_probs: float, blocks: tuple[int, int, int] | None = None, fp8_scale: float | None = None,
    value_dtype: torch.dtype | None = None,
) -> None:
    """``out [S, B, E]`` = ``quantization.int8_attention`` of ``qkv [S, B, 3E]`` (contiguous; int8
    codes of ``qkv_scale``, or float values) with ``mask_idx [B]`` (valid keys per sequence) or
    none; ``out`` int8: the context's codes; float8_e4m3fn: the FP8 codes of ``fp8_scale`` that an
    FP8 GEMM makes from its INT8 values rounded to ``value_dtype``; else its INT8 values in
    ``out``'s dtype.  ``blocks`` pins (BLOCK_M, BLOCK_N, warps) in place of ``attention_blocks``."""
    seq_len, batch, width = qkv.shape
    head = width // (3 * num_heads)
    if out.shape != (seq_len, batch, num_heads * head) or not (qkv.is_contiguous() and out.is_contiguous()):
        raise ValueError(f"int8_attention_into: qkv {tuple(qkv.shape)} -> out {tuple(out.shape)}")
    if seq_len > MAX_SEQ_LEN or head > MAX_HEAD_SIZE:
        raise ValueError(f"int8_attention_into: {seq_len} tokens of heads {head} wide, beyond the "
                         f"{MAX_SEQ_LEN} × {MAX_HEAD_SIZE} whose products are exact")
    mode = output_mode(out)
    if (mode == FP8_CODES) != (fp8_scale is not None and value_dtype is not None):
        raise ValueError("int8_attention_into: an FP8 output, and only that, needs fp8_scale and value_dtype")
    if seq_len == 0 or batch == 0:
        return
    block_m, block_n, warps = blocks or attention_blocks(seq_len)
    mask = mask_idx.to(torch.int32).contiguous() if mask_idx is not None else qkv
    score_scale = qkv_scale * qkv_scale / math.sqrt(head) * math.log2(math.e)
    grid = (batch * num_heads, triton.cdiv(seq_len, block_m))
    _int8_attention_kernel[grid](
        qkv, mask, out, seq_len, batch, float(qkv_scale), score_scale, 1.0 / dq_probs, dq_probs * qkv_scale,
        float(ctx_scale), 1.0 if fp8_scale is None else float(fp8_scale), HEADS=num_heads, HEAD=head,
        HEAD_BLOCK=max(32, triton.next_power_of_2(head)), HAS_MASK=mask_idx is not None,
        QKV_CODES=qkv.dtype == torch.int8, OUT=mode, VALUE_DTYPE=VALUE_DTYPES[value_dtype or torch.float32],
        CLAMP=1.0 / dq_probs >= 127.5, ONE_KEY_BLOCK=seq_len <= block_n, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=warps,
    )
