"""Portable versions of the interleaved-layout varseqlen plugins (INT8 interleaved and Megatron).

* ``CustomQKVToContextPluginDynamic`` v3 / v6: packed attention on ``[1, 3E, T, 1]`` whose channels
  are ordered ``[q|k|v][head][h]`` (q block, k block, v block), with ``cu_seqlens`` [B+1] and the
  ``max_seqlen`` dummy (its length bounds the sequence lengths) → context ``[1, E, T, 1]``.
* ``CustomSkipLayerNormPluginDynamic`` v3 / v7 (HFace): ``LN(x + skip)`` over the channel axis of
  ``[1, E, T, 1]``; fields ``beta`` and ``gamma`` only.
* ``CustomSkipLayerNormPluginDynamic`` v4 / v8 (Megatron): the same, plus a second output holding
  the pre-LayerNorm sum (Megatron's residual stream).

Memory format.  Real TensorRT runs these plugins on INT8 tensors in its kCHW32 vectorized format
(channels in blocks of 32, tokens inside a block).  The portable engine has no vectorized formats:
a ``[1, C, T, 1]`` tensor is an ordinary PyTorch tensor of that shape, usually a transposed *view* of
token-major ``[T, C]`` memory.  The plugins therefore work on the ``[T, C]`` view of their inputs
(copying only when the memory is channel-major), run the same fused ops as the packed plugins, and
return ``[1, C, T, 1]`` views of token-major results.  They run in the input's dtype (FP32, FP16).

Any head size and any sequence length work (TensorRT's INT8 kernels need H = 64 and T ≤ 384 per
sequence).  On CUDA the attention is one variable-length FlashAttention / memory-efficient kernel
call over all sequences; on the CPU it is the reference of ``ops.attention_varlen``.
"""

from __future__ import annotations

import torch

from helpers.portable import kernels, ops


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``[1, C, T, 1]`` → the token-major ``[T, C]`` view (a copy only if the memory is channel-major)."""
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[3] != 1:
        raise ValueError(f"expected an interleaved [1, C, T, 1] tensor, got shape {tuple(x.shape)}")
    tokens = x[0, :, :, 0].t()
    return tokens if tokens.stride(-1) == 1 else tokens.contiguous()


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """Token-major ``[T, C]`` → the ``[1, C, T, 1]`` view the interleaved layout expects."""
    return x.t().unsqueeze(0).unsqueeze(-1)


def qkv_blocks_to_per_head(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[T, 3E]`` in ``[q|k|v][head][h]`` order → ``[T, 3E]`` in the packed plugins' ``[head][q|k|v][h]`` order."""
    tokens, width = qkv.shape
    head_size = width // (3 * num_heads)
    return qkv.reshape(tokens, 3, num_heads, head_size).transpose(1, 2).reshape(tokens, width)


def attention_interleaved(
    qkv: torch.Tensor, cu_seqlens: torch.Tensor, num_heads: int, max_seqlen: int
) -> torch.Tensor:
    """Packed attention of the interleaved QKV plugin: ``[1, 3E, T, 1]`` → ``[1, E, T, 1]``.

    ``max_seqlen`` bounds every sequence length (the length of the ``max_seqlen`` input), so the
    CUDA path never reads the lengths back to the host.
    """
    tokens = channels_last(qkv)
    if tokens.shape[1] % (3 * num_heads):
        raise ValueError(f"QKV width {tokens.shape[1]} is not a multiple of 3 × {num_heads} heads")
    per_head = qkv_blocks_to_per_head(tokens, num_heads)
    if per_head.is_cuda:
        context = kernels.attention_varlen(per_head, cu_seqlens, num_heads, max_seqlen)
    else:
        context = ops.attention_varlen(per_head, cu_seqlens, num_heads)
    return channels_first(context)


def skip_layernorm_interleaved(
    x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``LN(x + skip)`` over the channel axis of ``[1, E, T, 1]`` tensors; returns (normalized, pre-LN sum).

    The epsilon is the packed varseqlen plugin's (``ops.skip_layernorm_eps``): these float versions
    have no TensorRT counterpart whose INT8 statistics rules would apply.
    """
    x_tokens, skip_tokens = channels_last(x), channels_last(skip)
    if x_tokens.shape != skip_tokens.shape:
        raise ValueError(f"skip-LayerNorm inputs differ in shape: {tuple(x.shape)} and {tuple(skip.shape)}")
    eps = ops.skip_layernorm_eps(x_tokens.shape[1], x_tokens.dtype)
    impl = kernels if x_tokens.is_cuda else ops
    normalized, summed = impl.skip_layernorm(x_tokens, skip_tokens, gamma, beta, None, eps)
    return channels_first(normalized), channels_first(summed)
