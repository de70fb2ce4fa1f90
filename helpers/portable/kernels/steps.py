"""The fused steps of the float fast path: closures over weights already on the device, each taking
and returning tensors in the network's shapes (``kernels/plan.py`` places them).

Steps only make views and launch kernels: no host synchronisation, so a CUDA graph captures a
run whole.  The switches of ``EngineOptions`` arrive here as plain arguments, fixed when the plan
is built.  Imported by the fast path only: the kernels need Triton, which exists only on GPU
machines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from helpers.portable.kernels import cublaslt, few_rows_gemm
from helpers.portable.kernels.attention import attention_fixed_biased, attention_varlen, key_padding_bias
from helpers.portable.kernels.gelu import bias_gelu_into
from helpers.portable.kernels.norms import embed_layernorm_into, mask_index_and_bias_into, skip_layernorm_into
from helpers.portable.kernels.pdl import CHAIN_MAX_ROWS
from helpers.portable.ops import GeluForm
from helpers.sparsity import to_semi_structured

Run = Callable[..., tuple[torch.Tensor, ...]]


def sparse_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """The 2:4 semi-structured form of a dense [out, in] weight for ``Gemm.sparse``, None where the
    weight is not 2:4 or PyTorch's sparse kernels cannot take it (``helpers.sparsity``)."""
    sparse = to_semi_structured(weight)
    if sparse is not None and hasattr(sparse, "fuse_transpose_cusparselt"):
        # cuSPARSELt then writes x @ Wᵀ row-major itself: no transposed result to copy.
        sparse.fuse_transpose_cusparselt = True
    return sparse


@dataclass(frozen=True)
class Gemm:
    """``rows [M, in] @ weightᵀ`` on the dense [out, in] weight: the tuned cuBLASLt GEMM
    (``cublaslt.linear``; PyTorch's call without ``cublaslt``), or at few FP16 rows the Triton
    ``few_rows_gemm`` (with ``few_rows``, launched under PDL with ``pdl``); the semi-structured
    sparse GEMM when ``sparse`` holds the weight's 2:4 form.  Results are contiguous [M, out]."""

    weight: torch.Tensor
    sparse: torch.Tensor | None
    cublaslt: bool = True
    few_rows: bool = True
    pdl: bool = True

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def takes_few_rows(self, rows: torch.Tensor) -> bool:
        """The one rule for the batch-1 path: dense FP16 products inside the PDL chain's rows
        (``pdl.CHAIN_MAX_ROWS``: above it cuBLASLt is faster for every BERT GEMM)."""
        return self.few_rows and self.sparse is None and self.dtype == torch.float16 and rows.shape[0] <= CHAIN_MAX_ROWS

    def __call__(self, rows: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False,
                 form: GeluForm = "tanh") -> torch.Tensor:
        """``gelu?(rows @ weightᵀ + bias)``, the GELU of ``form``.  The sparse GEMM's GELU is one Triton
        bias + GELU pass after it; cuBLASLt's GELU epilogue is the tanh form, so its erf GELU is the
        bias epilogue, then one in-place Triton GELU pass."""
        if self.sparse is not None:
            product = F.linear(rows, self.sparse, None if gelu else bias).contiguous()
            if not gelu:
                return product
            y = torch.empty_like(product)
            bias_gelu_into(y, product, bias, form)
            return y
        if self.takes_few_rows(rows):
            return few_rows_gemm.linear(rows, self.weight, bias, gelu, pdl=self.pdl, form=form)
        if not self.cublaslt:
            return cublaslt.torch_linear(rows, self.weight, bias, gelu, form=form)
        if gelu and form == "erf":
            y = cublaslt.linear(rows, self.weight, bias)
            bias_gelu_into(y, y, None, form)
            return y
        return cublaslt.linear(rows, self.weight, bias, gelu=gelu)

    def summands(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The product as (S blocks of [M, out] whose sum it is, S), for a skip-LayerNorm to sum:
        split-K float32 partials at few rows, else the product itself (S = 1)."""
        if self.takes_few_rows(rows):
            partials = few_rows_gemm.partial_products(rows, self.weight, pdl=self.pdl)
            return partials, partials.shape[0]
        return self(rows), 1


def dense_step(gemm: Gemm, bias: torch.Tensor | None, spatial: int, gelu: bool = False,
               form: GeluForm = "tanh") -> Run:
    """x [..., C, 1, ...] (``spatial`` trailing ones) → [..., K, 1, ...], with the bias (and the
    GELU of ``form`` when ``gelu``) in the GEMM's epilogue."""
    ones = (1,) * spatial

    def run(x: torch.Tensor) -> tuple[torch.Tensor]:
        y = gemm(x.to(gemm.dtype).reshape(-1, gemm.in_features), bias, gelu=gelu, form=form)
        return (y.view(*x.shape[: x.dim() - spatial - 1], gemm.out_features, *ones),)

    return run


def dense_skip_layernorm_step(gemm: Gemm, bias: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float,
                              pdl: bool) -> Run:
    """The GEMM without bias, then one Triton pass adding ``bias``, the residual, and normalising."""

    def run(x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor]:
        y, splits = gemm.summands(x.to(gemm.dtype).reshape(-1, gemm.in_features))
        skip = skip.to(gemm.dtype).contiguous()
        out = torch.empty_like(skip)
        skip_layernorm_into(out, None, y, skip, gamma, beta, bias, eps, splits, pdl=pdl)
        return (out,)

    return run


def skip_layernorm_step(compute: torch.dtype, bias: torch.Tensor | None, gamma: torch.Tensor, beta: torch.Tensor,
                        eps: float, pdl: bool) -> Run:
    def run(x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor]:
        x, skip = x.to(compute).contiguous(), skip.to(compute).contiguous()
        out = torch.empty_like(x)
        skip_layernorm_into(out, None, x, skip, gamma, beta, bias, eps, pdl=pdl)
        return (out,)

    return run


def embedding_step(tables: list[torch.Tensor], gamma: torch.Tensor, beta: torch.Tensor, dtype: torch.dtype,
                   bias_dtype: torch.dtype, pdl: bool) -> Run:
    """The fixed-length embedding: (embeddings, mask index, the additive key bias every attention
    layer shares) from the transposed id views, read in place."""
    word, token_type, position = tables
    hidden = gamma.numel()

    def run(ids: torch.Tensor, segs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        seq_len, batch = ids.shape
        out = torch.empty(seq_len, batch, hidden, 1, 1, dtype=dtype, device=ids.device)
        embed_layernorm_into(out, None, ids, segs, None, word, token_type, position, gamma, beta, pdl=pdl)
        index = torch.empty(batch, 1, dtype=torch.int32, device=ids.device)
        bias = torch.empty(batch, 1, 1, seq_len, dtype=bias_dtype, device=ids.device)
        mask_index_and_bias_into(index, bias, mask, pdl=pdl)
        return out, index, bias

    return run


def packed_positions(cu_seqlens: torch.Tensor, tokens: int) -> torch.Tensor:
    """[T] position of every packed token in its sequence, -1 past ``cu_seqlens[-1]``; on the
    device, no host synchronisation."""
    index = torch.arange(tokens, device=cu_seqlens.device)
    ends = cu_seqlens[1:].long()
    sequence = torch.searchsorted(ends, index, right=True)
    starts = torch.cat([cu_seqlens[:1].long(), ends])
    positions = index - starts[sequence]
    return torch.where(index < ends[-1:], positions, -1)


def embedding_varlen_step(tables: list[torch.Tensor], gamma: torch.Tensor, beta: torch.Tensor, megatron: bool,
                          pdl: bool = True) -> Run:
    """The packed embedding, positions from ``cu_seqlens`` on the device (Megatron's second
    output: the pre-LayerNorm sum)."""
    word, token_type, position = tables
    hidden = gamma.numel()

    def run(ids: torch.Tensor, segs: torch.Tensor, cu_seqlens: torch.Tensor, _max_seqlen: torch.Tensor
            ) -> tuple[torch.Tensor, ...]:
        tokens = ids.shape[0]
        out = torch.empty(tokens, hidden, 1, 1, dtype=word.dtype, device=ids.device)
        summed = torch.empty_like(out) if megatron else None
        if tokens:
            positions = packed_positions(cu_seqlens, tokens)
            embed_layernorm_into(out, summed, ids.view(tokens, 1), segs.view(tokens, 1), positions.view(tokens, 1),
                                 word, token_type, position, gamma, beta, pdl=pdl)
        second = summed if megatron else torch.zeros((), dtype=torch.int32, device=ids.device)
        return out, second

    return run


def attention_varlen_step(heads: int, dtype: torch.dtype) -> Run:
    def run(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: torch.Tensor) -> tuple[torch.Tensor]:
        tokens = qkv.shape[0]
        # The length of max_seqlen bounds every sequence's length and is known on the host.
        ctx = attention_varlen(qkv.to(dtype).reshape(tokens, -1), cu_seqlens, heads, max_seqlen.shape[0])
        return (ctx.view(tokens, -1, 1, 1),)

    return run


def attention_step(heads: int, dtype: torch.dtype, pdl: bool = True) -> Run:
    """Fixed-length attention given the shared key bias (or no mask)."""

    def run(qkv: torch.Tensor, key_bias: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        ctx = attention_fixed_biased(qkv.to(dtype).flatten(2), key_bias, heads, pdl=pdl)
        return (ctx.unflatten(-1, (-1, 1, 1)),)

    return run


def attention_from_mask_step(heads: int, dtype: torch.dtype, pdl: bool = True) -> Run:
    """Fixed-length attention making its key bias from the plugin's mask index."""

    def run(qkv: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor]:
        bias = key_padding_bias(mask[:, 0], qkv.shape[0], dtype)
        ctx = attention_fixed_biased(qkv.to(dtype).flatten(2), bias, heads, pdl=pdl)
        return (ctx.unflatten(-1, (-1, 1, 1)),)

    return run
