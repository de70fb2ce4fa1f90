"""Reference math of the BERT plugins and fused layers, in plain PyTorch.

These functions define what the portable engine computes; they run on CPU and CUDA in any
dtype.  Fast CUDA kernels (``helpers.portable.kernels``) implement the same signatures and are
tested against these on random inputs of awkward sizes.

Layout conventions (TensorRT's, see docs/SPEC.md "Plugins"):
* fixed-length tensors are sequence-major: ``[S, B, ...]``;
* packed (variable-length) tensors are token-major: ``[T, ...]`` with ``cu_seqlens`` [B+1];
* a token's 3E QKV values are ordered ``[head][q|k|v][head_size]``.
LayerNorm statistics are always accumulated in float32.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

GELU_COEFF = 0.044715
GELU_SQRT_2_OVER_PI = 0.79788456080286535587989211986876
# A GELU's form (``BertConfig.gelu``): the builder's tanh approximation (``gelu_tanh``), or the exact
# x·Φ(x) of TensorRT's GELU_ERF activation (``torch.nn.functional.gelu``).
GeluForm = Literal["tanh", "erf"]


def layernorm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """LayerNorm over the last axis as the plugins write it: var = E[x²] - mean², no clamping."""
    xf = x.float()
    mean = xf.mean(-1, keepdim=True)
    var = (xf * xf).mean(-1, keepdim=True) - mean * mean
    y = (xf - mean) * torch.rsqrt(var + eps) * gamma.float() + beta.float()
    return y.to(x.dtype)


def embed_layernorm(
    input_ids: torch.Tensor,
    segment_ids: torch.Tensor,
    position_ids: torch.Tensor,
    word: torch.Tensor,
    token_type: torch.Tensor,
    position: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding gather + sum + LayerNorm without epsilon.

    ``input_ids``/``segment_ids``/``position_ids`` have any common shape X; returns
    ``(normalized [*X, E], pre-LN sum [*X, E])`` in the tables' dtype.  A token whose id or
    segment is out of range gets zeros (the plugin skips it).
    """
    ids = input_ids.long()
    segs = segment_ids.long()
    pos = position_ids.long()
    valid = (ids >= 0) & (ids < word.shape[0]) & (segs >= 0) & (segs < token_type.shape[0])
    valid &= (pos >= 0) & (pos < position.shape[0])
    zero = torch.zeros((), dtype=torch.long, device=ids.device)
    summed = (
        word[torch.where(valid, ids, zero)]
        + token_type[torch.where(valid, segs, zero)]
        + position[torch.where(valid, pos, zero)]
    )
    normed = layernorm(summed, gamma, beta, eps=0.0)
    keep = valid.unsqueeze(-1)
    return torch.where(keep, normed, 0).to(word.dtype), torch.where(keep, summed, 0).to(word.dtype)


def mask_index(input_mask: torch.Tensor) -> torch.Tensor:
    """[S, B] mask → [B] int32: the first position whose mask is 0, or S (leading valid count)."""
    seq_len = input_mask.shape[0]
    positions = torch.arange(seq_len, device=input_mask.device).unsqueeze(1).expand_as(input_mask)
    first_zero = torch.where(input_mask == 0, positions, seq_len)
    return first_zero.min(dim=0).values.to(torch.int32)


def skip_layernorm(
    x: torch.Tensor,
    skip: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``LN(x + skip [+ bias])`` over the last axis; returns (normalized, pre-LN sum)."""
    summed = x.float() + skip.float()
    if bias is not None:
        summed = summed + bias.float()
    return layernorm(summed, gamma, beta, eps).to(x.dtype), summed.to(x.dtype)


def skip_layernorm_eps(hidden_size: int, dtype: torch.dtype) -> float:
    """The plugin's epsilon: machine epsilon of the compute type on its vectorized sizes only."""
    if hidden_size not in (768, 1024):
        return 0.0
    return 2.0**-10 if dtype in (torch.float16, torch.int8) else float(torch.finfo(torch.float32).eps)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The builder's elementwise GELU: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    xf = x.float()
    return (0.5 * xf * (1.0 + torch.tanh(GELU_SQRT_2_OVER_PI * (xf + GELU_COEFF * xf * xf * xf)))).to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1×1 convolution over the channel axis (last here): weight is [out, in]."""
    return F.linear(x, weight, bias)


def _split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[..., 3E] in [head][q|k|v][h] order → three [..., N, H] views."""
    head_size = qkv.shape[-1] // (3 * num_heads)
    per_head = qkv.unflatten(-1, (num_heads, 3, head_size))
    return per_head[..., 0, :], per_head[..., 1, :], per_head[..., 2, :]


def attention_fixed(qkv: torch.Tensor, mask_idx: torch.Tensor | None, num_heads: int) -> torch.Tensor:
    """Fixed-length multi-head attention.

    ``qkv`` [S, B, 3E]; ``mask_idx`` [B] (keys at positions ≥ mask_idx[b] get probability 0) or
    None for a full softmax.  Returns the context [S, B, E], head n at n·H.
    """
    seq_len, batch = qkv.shape[0], qkv.shape[1]
    q, k, v = _split_heads(qkv, num_heads)  # [S, B, N, H]
    head_size = q.shape[-1]
    q, k, v = (t.permute(1, 2, 0, 3).float() for t in (q, k, v))  # [B, N, S, H]
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_size)
    if mask_idx is not None:
        keys = torch.arange(seq_len, device=qkv.device)
        masked = keys.view(1, 1, 1, seq_len) >= mask_idx.view(batch, 1, 1, 1).to(keys.device)
        scores = scores.masked_fill(masked, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    ctx = torch.matmul(probs, v)  # [B, N, S, H]
    return ctx.permute(2, 0, 1, 3).reshape(seq_len, batch, num_heads * head_size).to(qkv.dtype)


def attention_varlen(qkv: torch.Tensor, cu_seqlens: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Packed attention: ``qkv`` [T, 3E], sequences delimited by ``cu_seqlens`` [B+1] → [T, E].

    Reference only: loops over sequences.  Fast paths must not.
    """
    out = torch.empty(qkv.shape[0], qkv.shape[1] // 3, dtype=qkv.dtype, device=qkv.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            out[start:end] = attention_fixed(qkv[start:end].unsqueeze(1), None, num_heads).squeeze(1)
    return out


def varlen_position_ids(cu_seqlens: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """Position of every packed token inside its own sequence."""
    tokens = torch.arange(total_tokens, device=cu_seqlens.device)
    seq_of_token = torch.searchsorted(cu_seqlens[1:].long(), tokens, right=True)
    return tokens - cu_seqlens.long()[seq_of_token]
