"""INT8 (and FP8) arithmetic of the portable engine.

TensorRT's implicit INT8 mode quantizes a tensor symmetrically with its dynamic range:
``q = clamp(round(x / s), -128, 127)`` with ``s = amax / 127``, rounding half to even.  Weights
get one scale per output channel (``max |w[c, :]| / 127``).  A GEMM multiplies the int8 codes
with int32 accumulation and dequantizes with ``s_in · s_w[c]`` before the float bias.

Every function here computes those integers exactly, on any device:
* CUDA: ``torch._int_mm`` (cuBLASLt int8 tensor cores; the weight is passed column-major as the
  ``.t()`` view of its ``[out, in]`` codes, operands zero-padded to the sizes the kernel takes);
* CPU: the same products as a float64 matmul, exact because every partial sum is an integer
  far below 2^53.
So the CPU simulation and the CUDA path differ only where their float inputs already differ by
enough to move a value across a rounding boundary: by at most one quantization step.

FP8 (E4M3, ``--fp8``) uses the same activation ranges, with ``s = amax / 448`` per tensor and a
weight scale per output channel, through ``torch._scaled_mm`` on CUDA and a float32 emulation on
CPU (close to, not bit-equal with, the GPU: see ``fp8_linear``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from helpers.portable import ops

INT8_MAX = 127.0
FP8_E4M3_MAX = 448.0
# torch._int_mm takes M > 16 and K, N multiples of 8.
_INT_MM_MIN_ROWS = 17
_INT_MM_MULTIPLE = 8


def scale_from_amax(amax: float) -> float:
    """The symmetric INT8 scale of a range; an all-zero tensor keeps a harmless scale of 1."""
    amax = abs(float(amax))
    return amax / INT8_MAX if amax > 0 else 1.0


def quantize(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """float → int8 codes: round half to even of ``x / scale``, saturated to [-128, 127]."""
    return torch.round(x.float() / scale).clamp_(-128, 127).to(torch.int8)


def dequantize(q: torch.Tensor, scale: float | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale).to(dtype)


def fake_quantize(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``dequantize(quantize(x))`` in x's dtype: what an INT8 tensor between two layers holds."""
    return (torch.round(x.float() / scale).clamp_(-128, 127) * scale).to(x.dtype)


@dataclass
class QuantizedWeight:
    """Int8 codes of an ``[out, in]`` weight with one float32 scale per output channel."""

    codes: torch.Tensor  # int8 [out, in], row-major
    scales: torch.Tensor  # float32 [out]

    def to(self, device: torch.device | str) -> QuantizedWeight:
        return QuantizedWeight(self.codes.to(device), self.scales.to(device))


def quantize_linear_weights(weight: torch.Tensor) -> QuantizedWeight:
    """Per-output-channel symmetric quantization of an ``[out, in]`` weight."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scales = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    codes = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return QuantizedWeight(codes.contiguous(), scales.contiguous())


def _pad_to(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    if t.shape == (rows, cols):
        return t
    return torch.nn.functional.pad(t, (0, cols - t.shape[1], 0, rows - t.shape[0]))


def int_matmul(a: torch.Tensor, b_codes: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``a @ b_codes.T`` of int8 ``a`` [M, K] and int8 ``b_codes`` [N, K]."""
    m, k = a.shape
    n = b_codes.shape[0]
    if a.is_cuda:
        rows = max(m, _INT_MM_MIN_ROWS)
        depth = -(-k // _INT_MM_MULTIPLE) * _INT_MM_MULTIPLE
        cols = -(-n // _INT_MM_MULTIPLE) * _INT_MM_MULTIPLE
        a_padded = _pad_to(a, rows, depth).contiguous()
        b_padded = _pad_to(b_codes, cols, depth).contiguous()
        # b_padded.t() is the column-major [K, N] view cuBLASLt's int8 kernels need.
        return torch._int_mm(a_padded, b_padded.t())[:m, :n]
    return torch.matmul(a.double(), b_codes.double().t()).to(torch.int32)


def int8_linear(
    x: torch.Tensor,
    weight: QuantizedWeight,
    bias: torch.Tensor | None,
    in_scale: float,
    out_scale: float | None = None,
) -> torch.Tensor:
    """INT8 1×1 convolution over the last axis: quantize → int8·int8 (int32) → dequantize + bias.

    ``out_scale`` set: the output is an INT8 tensor (returned dequantized, in x's dtype).
    """
    rows = x.reshape(-1, x.shape[-1])
    acc = int_matmul(quantize(rows, in_scale), weight.codes)
    scales = weight.scales * in_scale
    # One pass: int32 accumulators promote to float32 inside the multiply(-add).
    y = acc * scales if bias is None else torch.addcmul(bias.float(), acc, scales)
    if out_scale is not None:
        y = fake_quantize(y, out_scale)
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.codes.shape[0])


# ---------------------------------------------------------------------------------------------
# FP8 E4M3


@dataclass
class Fp8Weight:
    codes: torch.Tensor  # float8_e4m3fn [out, in], row-major
    scale: torch.Tensor  # float32 [out]: one per output channel


def quantize_fp8_weights(weight: torch.Tensor) -> Fp8Weight:
    """Per-output-channel E4M3 codes of an ``[out, in]`` weight: each row's largest magnitude at 448."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scales = torch.where(amax > 0, amax / FP8_E4M3_MAX, torch.ones_like(amax))
    codes = (w / scales[:, None]).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return Fp8Weight(codes.contiguous(), scales.contiguous())


def fp8_input_scale(amax: float, device: torch.device | str) -> torch.Tensor:
    """The per-tensor FP8 scale of an activation range, as the device scalar ``_scaled_mm`` takes
    (made once when the plan is built: creating it per call would copy host→device under capture)."""
    amax = abs(float(amax))
    return torch.tensor(amax / FP8_E4M3_MAX if amax > 0 else 1.0, dtype=torch.float32, device=device)


def fp8_linear(x: torch.Tensor, weight: Fp8Weight, bias: torch.Tensor | None, in_scale: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 GEMM: ``x`` scaled by ``in_scale`` (from ``fp8_input_scale``), the weight by its
    per-channel scales.

    The CPU emulation accumulates in float32 (exact for these codes); Hopper's FP8 tensor cores
    accumulate each 128-wide K block in a narrower format before promoting to float32, which
    moves results by about 2^-11 of the accumulated magnitude.
    """
    rows = x.reshape(-1, x.shape[-1])
    codes = (rows.float() / in_scale).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    m, k = codes.shape
    n = weight.codes.shape[0]
    if x.is_cuda and k % 16 == 0 and n % 16 == 0:
        # The weight's per-channel scales are applied to the float32 product: _scaled_mm scales a
        # whole operand by one factor unless both are scaled per row.
        a = _pad_to(codes.view(torch.int8), -(-m // 16) * 16, k).view(torch.float8_e4m3fn)
        unit = torch.ones((), dtype=torch.float32, device=x.device)
        y = torch._scaled_mm(a, weight.codes.t(), scale_a=in_scale, scale_b=unit, out_dtype=torch.float32)[:m]
        y = y * weight.scale
    else:
        y = (codes.float() @ weight.codes.float().t()) * (in_scale * weight.scale)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


# ---------------------------------------------------------------------------------------------
# INT8 plugins


def _exact_float_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Product of integer-valued tensors, exact: float64 on CPU (or where TF32 may be used),
    else float32, exact on CUDA for these sizes: |partial sums| ≤ 127·127·512 < 2^24.
    """
    if a.is_cuda and torch.get_float32_matmul_precision() == "highest":
        return torch.matmul(a.float(), b.float())
    return torch.matmul(a.double(), b.double()).float()


def int8_attention(
    qkv: torch.Tensor,
    mask_idx: torch.Tensor | None,
    num_heads: int,
    qkv_scale: float,
    ctx_scale: float,
    dq_probs: float,
) -> torch.Tensor:
    """The fused INT8 MHA (docs/SPEC.md "Attention plugin") on ``[S, B, 3E]`` (values of an INT8 tensor, any float dtype).

    Q·Kᵀ on the int8 codes, scaled by ``s_qkv² / √H``; softmax in float; probabilities
    quantized with step ``dq_probs``; P·V on the codes, scaled by ``dq_probs · s_qkv``; the
    context is an INT8 tensor with scale ``ctx_scale`` (returned dequantized, in qkv's dtype).
    """
    seq_len, batch = qkv.shape[0], qkv.shape[1]
    codes = quantize(qkv, qkv_scale).float()
    head_size = qkv.shape[-1] // (3 * num_heads)
    per_head = codes.unflatten(-1, (num_heads, 3, head_size))
    q, k, v = (per_head[..., i, :].permute(1, 2, 0, 3) for i in range(3))  # [B, N, S, H]
    scores = _exact_float_matmul(q, k.transpose(-1, -2)) * (qkv_scale * qkv_scale / math.sqrt(head_size))
    if mask_idx is not None:
        keys = torch.arange(seq_len, device=qkv.device)
        masked = keys.view(1, 1, 1, seq_len) >= mask_idx.view(batch, 1, 1, 1).to(keys.device)
        scores = scores.masked_fill(masked, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    prob_codes = torch.round(probs / dq_probs).clamp_(0, 127)
    ctx = _exact_float_matmul(prob_codes, v) * (dq_probs * qkv_scale)
    ctx = ctx.permute(2, 0, 1, 3).reshape(seq_len, batch, num_heads * head_size)
    return fake_quantize(ctx, ctx_scale).to(qkv.dtype)


def int8_skip_layernorm(
    x: torch.Tensor,
    skip: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    x_scale: float,
    skip_scale: float,
    out_scale: float,
    eps: float = 0.0,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SkipLayerNorm with INT8 input, skip and output: ``LN(s_in·in + s_skip·skip)``.

    Returns (output, pre-LN sum) like ``ops.skip_layernorm``; the output holds INT8 values.
    """
    summed = dequantize(quantize(x, x_scale), x_scale) + dequantize(quantize(skip, skip_scale), skip_scale)
    if bias is not None:
        summed = summed + bias.float()
    normed = ops.layernorm(summed, gamma, beta, eps)
    return fake_quantize(normed, out_scale).to(x.dtype), summed.to(x.dtype)


def int8_attention_varlen(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    num_heads: int,
    qkv_scale: float,
    ctx_scale: float,
    dq_probs: float,
) -> torch.Tensor:
    """``int8_attention`` on packed ``[T, 3E]`` tokens (``[head][q|k|v][h]`` order) → ``[T, E]``.

    The sequences are gathered into a padded ``[max_seqlen, B, 3E]`` batch and scattered back, by
    index only: no host synchronisation, so CUDA graphs can capture it.
    """
    tokens, width = qkv.shape
    batch = cu_seqlens.shape[0] - 1
    starts = cu_seqlens[:-1].long()
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    offsets = torch.arange(max_seqlen, device=qkv.device)
    valid = offsets[:, None] < lengths[None, :]  # [S, B]
    positions = torch.where(valid, starts[None, :] + offsets[:, None], tokens)  # row T: a padding row
    padded_input = torch.cat([qkv, qkv.new_zeros(1, width)])[positions]  # [S, B, 3E]
    ctx = int8_attention(padded_input, lengths.to(torch.int32), num_heads, qkv_scale, ctx_scale, dq_probs)
    out = qkv.new_zeros(tokens + 1, width // 3)
    out.index_copy_(0, positions.flatten(), ctx.reshape(max_seqlen * batch, -1))
    return out[:tokens]
