"""Fast CUDA versions of ``helpers.portable.ops``, with the same signatures and results.

Winners of ``bench/kernels_bench.py`` on the H100 (numbers in docs/perf/KERNELS.md): Triton
kernels for the embedding LayerNorm, the residual LayerNorm and the GELU pass (tanh or erf);
cuBLASLt for the GEMMs (``cublaslt``: per-shape tuned algorithms, or PyTorch's call), with bias +
tanh GELU in the epilogue; SDPA cuDNN / FlashAttention on strided views of the packed QKV tensor,
and a Triton attention (``attention_small``) where few (sequence, head) pairs would leave cuDNN's
grid small.  At batch-1 token counts (``pdl.CHAIN_MAX_ROWS``) the GEMMs are ``few_rows_gemm``'s and
every Triton kernel launches under programmatic dependent launch (``pdl``).  ``plan.lower_fused``
puts them into the portable engine.  Triton is an optional dependency, imported on first use only:
CPU machines need none.
"""

from __future__ import annotations

import torch

from helpers.portable import ops
from helpers.portable.kernels import cublaslt
from helpers.portable.kernels.attention import attention_fixed, attention_varlen

__all__ = [
    "attention_fixed",
    "attention_varlen",
    "elementwise_gelu",
    "embed_layernorm",
    "linear",
    "linear_gelu",
    "skip_layernorm",
]

linear = ops.linear  # cuBLAS through PyTorch already is the fast path for a plain GEMM + bias.


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
    """Same contract as ``ops.embed_layernorm``; one Triton program per token."""
    from helpers.portable.kernels.norms import embed_layernorm_into

    shape = (*input_ids.shape, gamma.numel())
    out = torch.empty(shape, dtype=word.dtype, device=word.device)
    summed = torch.empty_like(out)
    if input_ids.numel():
        ids, segs, pos = (t.reshape(-1, 1) for t in (input_ids, segment_ids, position_ids.expand_as(input_ids)))
        embed_layernorm_into(out, summed, ids, segs, pos, word, token_type, position, gamma, beta)
    return out, summed


def skip_layernorm(
    x: torch.Tensor,
    skip: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``ops.skip_layernorm``; one Triton program per row."""
    from helpers.portable.kernels.norms import skip_layernorm_into

    x, skip = x.contiguous(), skip.contiguous()
    out, summed = torch.empty_like(x), torch.empty_like(x)
    if x.numel():
        skip_layernorm_into(out, summed, x, skip, gamma, beta, bias, eps)
    return out, summed


def elementwise_gelu(x: torch.Tensor, form: ops.GeluForm = "tanh") -> torch.Tensor:
    """Same contract as ``ops.gelu_tanh`` (``form`` tanh) or ``torch.nn.functional.gelu`` (erf),
    computed in float32; one Triton elementwise pass."""
    from helpers.portable.kernels.gelu import bias_gelu_into

    x = x.contiguous()
    out = torch.empty_like(x)
    bias_gelu_into(out, x, None, form)
    return out


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``ops.gelu_tanh(ops.linear(x, weight, bias))`` as one GEMM whose epilogue adds the bias and
    applies the tanh GELU (cuBLASLt ``GELU_BIAS``, the engine's ``cublaslt.linear``: a tuned
    algorithm in FP16, PyTorch's call otherwise).  Half types keep the intermediate in the
    epilogue's float registers.
    """
    out = cublaslt.linear(x.reshape(-1, x.shape[-1]), weight, bias, gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])
