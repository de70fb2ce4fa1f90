"""Triton kernels: embedding gather + LayerNorm, and (bias +) residual + LayerNorm.

One program normalizes one row of E values; statistics are accumulated in float32 as
``var = E[x²] - mean²`` like the reference (``helpers.portable.ops.layernorm``).  The residual
LayerNorm also takes its input as float32 split-K partial products (``few_rows_gemm``), summed
here.  All three kernels keep the PDL contract of ``kernels.pdl`` (only LayerNorm parameters are
read before ``gdc_wait``).  Imported lazily by ``helpers.portable.kernels`` because Triton exists
only on GPU machines.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from helpers.portable.kernels.common import load_layernorm_params, normalize
from helpers.portable.kernels.pdl import pdl_launch


def _row_launch(hidden: int) -> tuple[int, int]:
    """Block width (power of two ≥ E) and warps: 16-byte accesses per thread on real sizes."""
    block = triton.next_power_of_2(hidden)
    return block, max(1, min(8, block // 256))


@triton.jit
def _skip_layernorm_kernel(
    x_ptr, skip_ptr, bias_ptr, gamma_ptr, beta_ptr, out_ptr, sum_ptr, hidden, split_stride, eps,
    HAS_BIAS: tl.constexpr, STORE_SUM: tl.constexpr, SPLITS: tl.constexpr, USE_PDL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    cols_mask = cols < hidden
    offsets = row * hidden + cols
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=cols_mask, other=0.0).to(tl.float32)
    gamma, beta = load_layernorm_params(gamma_ptr, beta_ptr, cols, cols_mask, USE_PDL)
    v = tl.load(x_ptr + offsets, mask=cols_mask, other=0.0).to(tl.float32)
    for split in tl.static_range(1, SPLITS):
        v += tl.load(x_ptr + split * split_stride + offsets, mask=cols_mask, other=0.0)
    v += tl.load(skip_ptr + offsets, mask=cols_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += bias
    y = normalize(v, cols_mask, gamma, beta, hidden, eps)
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=cols_mask)
    if STORE_SUM:
        tl.store(sum_ptr + offsets, v.to(sum_ptr.dtype.element_ty), mask=cols_mask)


@triton.jit
def _embed_layernorm_kernel(
    ids_ptr, segs_ptr, pos_ptr, word_ptr, type_ptr, position_ptr, gamma_ptr, beta_ptr,
    out_ptr, sum_ptr, hidden, n_words, n_types, n_positions, batch,
    ids_stride_s, ids_stride_b, segs_stride_s, segs_stride_b, pos_stride_s, pos_stride_b,
    POSITION_IS_S: tl.constexpr, STORE_SUM: tl.constexpr, USE_PDL: tl.constexpr, BLOCK: tl.constexpr,
):
    # Row r is token (s, b) = (r // batch, r % batch) of [S, B] id tensors of any strides.
    row = tl.program_id(0).to(tl.int64)
    s = row // batch
    b = row % batch
    cols = tl.arange(0, BLOCK)
    cols_mask = cols < hidden
    gamma, beta = load_layernorm_params(gamma_ptr, beta_ptr, cols, cols_mask, USE_PDL)
    token = tl.load(ids_ptr + s * ids_stride_s + b * ids_stride_b).to(tl.int64)
    segment = tl.load(segs_ptr + s * segs_stride_s + b * segs_stride_b).to(tl.int64)
    if POSITION_IS_S:
        position = s
    else:
        position = tl.load(pos_ptr + s * pos_stride_s + b * pos_stride_b).to(tl.int64)
    valid = (token >= 0) & (token < n_words) & (segment >= 0) & (segment < n_types)
    valid = valid & (position >= 0) & (position < n_positions)
    token = tl.where(valid, token, 0)
    segment = tl.where(valid, segment, 0)
    position = tl.where(valid, position, 0)
    word = tl.load(word_ptr + token * hidden + cols, mask=cols_mask, other=0.0)
    kind = tl.load(type_ptr + segment * hidden + cols, mask=cols_mask, other=0.0)
    place = tl.load(position_ptr + position * hidden + cols, mask=cols_mask, other=0.0)
    # The sum is rounded to the tables' dtype after each addition, as the reference adds them.
    table_type = word.dtype
    v = (word.to(tl.float32) + kind.to(tl.float32)).to(table_type).to(tl.float32)
    v = (v + place.to(tl.float32)).to(table_type).to(tl.float32)
    y = normalize(v, cols_mask, gamma, beta, hidden, 0.0)
    keep = cols_mask & valid
    tl.store(out_ptr + row * hidden + cols, tl.where(keep, y, 0.0).to(out_ptr.dtype.element_ty), mask=cols_mask)
    if STORE_SUM:
        tl.store(sum_ptr + row * hidden + cols, tl.where(keep, v, 0.0).to(sum_ptr.dtype.element_ty), mask=cols_mask)


@triton.jit
def _mask_bias_kernel(mask_ptr, stride_s, stride_b, seq_len, index_ptr, bias_ptr, USE_PDL: tl.constexpr,
                      BLOCK: tl.constexpr):
    # Per sequence b: the first position whose mask is 0 (or S), and the additive key bias row.
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    b = tl.program_id(0).to(tl.int64)
    positions = tl.arange(0, BLOCK)
    inside = positions < seq_len
    mask = tl.load(mask_ptr + positions * stride_s + b * stride_b, mask=inside, other=1)
    first_zero = tl.min(tl.where((mask == 0) & inside, positions, seq_len), axis=0)
    tl.store(index_ptr + b, first_zero.to(tl.int32))
    bias = tl.where(positions < first_zero, 0.0, float("-inf"))
    tl.store(bias_ptr + b * seq_len + positions, bias.to(bias_ptr.dtype.element_ty), mask=inside)


def skip_layernorm_into(
    out: torch.Tensor,
    summed: torch.Tensor | None,
    x: torch.Tensor,
    skip: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    splits: int = 1,
    pdl: bool = True,
) -> None:
    """Write ``LN(x + skip [+ bias])`` into ``out`` (and the sum into ``summed`` if given).

    All row tensors are contiguous with rows of E = ``gamma.numel()`` values; with ``splits`` > 1,
    ``x`` is ``splits`` blocks of such rows (split-K partial products) whose sum is the input.
    ``pdl``: launched under PDL in the batch-1 chain (``pdl.pdl_launch``).
    """
    hidden = gamma.numel()
    block, warps = _row_launch(hidden)
    rows = x.numel() // (hidden * splits)
    _skip_layernorm_kernel[(rows,)](
        x, skip, bias if bias is not None else gamma, gamma, beta, out,
        summed if summed is not None else out, hidden, rows * hidden, eps,
        HAS_BIAS=bias is not None, STORE_SUM=summed is not None, SPLITS=splits, BLOCK=block, num_warps=warps,
        **pdl_launch(out.device, rows, pdl),
    )


def embed_layernorm_into(
    out: torch.Tensor,
    summed: torch.Tensor | None,
    input_ids: torch.Tensor,
    segment_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    word: torch.Tensor,
    token_type: torch.Tensor,
    position: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    pdl: bool = True,
) -> None:
    """Gather + sum + LayerNorm of every token of the [S, B] id tensors (any strides) into ``out``
    ([S, B, E] rows); ``position_ids`` None means the position of token (s, b) is s."""
    hidden = gamma.numel()
    block, warps = _row_launch(hidden)
    seq_len, batch = input_ids.shape
    positions = input_ids if position_ids is None else position_ids
    _embed_layernorm_kernel[(seq_len * batch,)](
        input_ids, segment_ids, positions, word, token_type, position, gamma, beta,
        out, summed if summed is not None else out, hidden, word.shape[0], token_type.shape[0], position.shape[0], batch,
        *input_ids.stride(), *segment_ids.stride(), *positions.stride(),
        POSITION_IS_S=position_ids is None, STORE_SUM=summed is not None, BLOCK=block, num_warps=warps,
        **pdl_launch(out.device, seq_len * batch, pdl),
    )


def mask_index_and_bias_into(index: torch.Tensor, bias: torch.Tensor, input_mask: torch.Tensor, pdl: bool = True) -> None:
    """From an [S, B] mask (any strides): ``index`` [B] int32 as ``ops.mask_index``, and ``bias``
    [B, S] = ``attention.key_padding_bias`` of it, in one launch."""
    seq_len, batch = input_mask.shape
    _mask_bias_kernel[(batch,)](input_mask, *input_mask.stride(), seq_len, index, bias,
                                BLOCK=triton.next_power_of_2(seq_len), num_warps=4,
                                **pdl_launch(bias.device, seq_len * batch, pdl))
