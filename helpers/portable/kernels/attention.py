"""Attention straight on the packed per-token QKV layout ``[head][q|k|v][h]``, no transposes.

Fixed length ([S, B, 3E], sequence-major), the key mask given as an additive [B, 1, 1, S] bias:
few (sequence, head) pairs run ``attention_small``'s Triton kernel, which spreads them over many
query-block programs; otherwise PyTorch's SDPA with the cuDNN backend on strided views of the QKV
tensor, which writes its output in the query's stride order (the [S, B, E] result is a view).
Packed variable length ([T, 3E] + cu_seqlens): FlashAttention's varlen kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# cuDNN first; fp32 and shapes cuDNN rejects fall back to the memory-efficient kernel, head sizes
# no fused kernel takes (not a multiple of 8) to the plain math one.
_FIXED_BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                   SDPBackend.MATH]


def key_padding_bias(mask_idx: torch.Tensor, seq_len: int, dtype: torch.dtype) -> torch.Tensor:
    """[B] leading-valid counts → additive [B, 1, 1, S] bias: 0 for kept keys, -inf for the rest."""
    keys = torch.arange(seq_len, device=mask_idx.device)
    masked = keys.unsqueeze(0) >= mask_idx.unsqueeze(1)
    bias = torch.zeros(masked.shape, dtype=dtype, device=mask_idx.device).masked_fill_(masked, float("-inf"))
    return bias.view(mask_idx.shape[0], 1, 1, seq_len)


# Where the Triton kernel beats cuDNN (bench/attention_small_bench.py, H100): up to this many
# (sequence, head) pairs at S ≤ 512, i.e. BERT-large up to batch 32, the largest measured (S = 384,
# batch 32: 82 µs against 87; batch 1: 6.9 against 10.8).
SMALL_MAX_PAIRS = 512
SMALL_MAX_SEQ = 512


def uses_small_kernel(qkv: torch.Tensor, key_bias: torch.Tensor | None, num_heads: int) -> bool:
    """Whether ``attention_fixed_biased`` runs ``attention_small``'s Triton kernel on these inputs."""
    seq_len, batch, width = qkv.shape
    head_size = width // (3 * num_heads)
    return (
        qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16) and head_size in (16, 32, 64, 128)
        and seq_len <= SMALL_MAX_SEQ and batch * num_heads <= SMALL_MAX_PAIRS
        and (key_bias is None or (key_bias.dim() == 4 and key_bias.shape[1:3] == (1, 1)))
    )


def _heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    head_size = qkv.shape[-1] // (3 * num_heads)
    per_head = qkv.unflatten(-1, (num_heads, 3, head_size))
    return per_head[..., 0, :], per_head[..., 1, :], per_head[..., 2, :]


def attention_fixed_sdpa(qkv: torch.Tensor, key_bias: torch.Tensor | None, num_heads: int) -> torch.Tensor:
    """``attention_fixed_biased`` on PyTorch's SDPA (cuDNN first), whatever the size."""
    seq_len, batch = qkv.shape[0], qkv.shape[1]
    q, k, v = (t.permute(1, 2, 0, 3) for t in _heads(qkv, num_heads))  # [B, N, S, H] views
    with sdpa_kernel(_FIXED_BACKENDS):
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias)
    return ctx.permute(2, 0, 1, 3).reshape(seq_len, batch, qkv.shape[-1] // 3)


def attention_fixed_biased(qkv: torch.Tensor, key_bias: torch.Tensor | None, num_heads: int,
                           pdl: bool = True) -> torch.Tensor:
    """``attention_fixed`` with the mask already turned into ``key_padding_bias`` (shared by layers);
    ``pdl`` False: the Triton kernel launches without PDL."""
    if uses_small_kernel(qkv, key_bias, num_heads):
        # Triton is optional (GPU machines only): imported where its kernel runs.
        from helpers.portable.kernels.attention_small import attention_small

        return attention_small(qkv, key_bias, num_heads, use_pdl=None if pdl else False)
    return attention_fixed_sdpa(qkv, key_bias, num_heads)


def attention_fixed(qkv: torch.Tensor, mask_idx: torch.Tensor | None, num_heads: int) -> torch.Tensor:
    """Same contract as ``helpers.portable.ops.attention_fixed`` (sequences need ≥ 1 valid key)."""
    bias = None if mask_idx is None else key_padding_bias(mask_idx, qkv.shape[0], qkv.dtype)
    return attention_fixed_biased(qkv, bias, num_heads)


def attention_varlen(
    qkv: torch.Tensor, cu_seqlens: torch.Tensor, num_heads: int, max_seqlen: int | None = None
) -> torch.Tensor:
    """Same contract as ``helpers.portable.ops.attention_varlen``.

    ``max_seqlen`` (any upper bound of the lengths) avoids reading the lengths back to the host.
    FP16/BF16 run FlashAttention; FP32 runs the memory-efficient kernel's varlen mode.
    """
    total = qkv.shape[0]
    cu = cu_seqlens.to(device=qkv.device, dtype=torch.int32)
    if max_seqlen is None:
        max_seqlen = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    q, k, v = _heads(qkv, num_heads)  # [T, N, H] views
    if qkv.dtype in (torch.float16, torch.bfloat16):
        ctx = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_seqlen, max_seqlen, 0.0, False, False)[0]
    else:
        ctx = torch.ops.aten._efficient_attention_forward(
            q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), None, cu, cu, max_seqlen, max_seqlen, 0.0, 0
        )[0]
    return ctx.reshape(total, qkv.shape[-1] // 3)
