"""The INT8 / FP8 engine's steps on CUDA: ``int8_plan``'s arithmetic with few passes over memory.

An INT8 GEMM is one Triton tensor-core GEMM on weight codes made once at load (``int8_gemm``) with
the dequantize + bias, and the builder's GELU (tanh or erf) when fused, in its epilogue, behind one
quantize pass (``quant_kernels``) unless its producer already wrote the int8 codes; FP8 is one
quantize pass and ``torch._scaled_mm`` with the bias in its epilogue (then one Triton GELU pass
when fused).  ``-iln`` skip-LayerNorm is one row pass; ``-imh`` attention is one Triton kernel with
both products on int8 codes (``int8_attention``).  Imported by the INT8 lowering on CUDA only: the
kernels need Triton, which exists only on GPU machines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from helpers.portable import kernels
from helpers.portable import quantization as q
from helpers.portable.kernels import int8_gemm as ig
from helpers.portable.kernels import quant_kernels as qk
from helpers.portable.kernels.int8_attention import int8_attention_into
from helpers.portable.ops import GeluForm

Run = Callable[..., Sequence[torch.Tensor]]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def fast_int8_gemm(
    weight: torch.Tensor, bias: torch.Tensor | None, in_amax: float, gelu: bool, out_dtype: torch.dtype,
    out_amax: float | None = None, form: GeluForm = "tanh",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``int8_plan.int8_gemm`` (then the GELU of ``form`` when ``gelu``) as the Triton GEMM with the
    dequantize in its epilogue, behind one quantize pass, or none when given int8 codes (of
    ``in_amax``'s grid).

    ``out_amax`` set: the output is its int8 codes on that range's grid, from the ``out_dtype``
    value the unfused steps would hand to the next layer's quantize pass.
    """
    codes_w = q.quantize_linear_weights(weight)
    in_scale = q.scale_from_amax(in_amax)
    n, k = codes_w.codes.shape
    col_scales = (codes_w.scales * in_scale).contiguous()
    bias32 = None if bias is None else bias.float().contiguous()
    out_scale = None if out_amax is None else q.scale_from_amax(out_amax)

    def gemm(rows: torch.Tensor) -> torch.Tensor:
        m = rows.shape[0]
        if rows.dtype == torch.int8:
            codes = rows.contiguous()
        else:
            codes = torch.empty(m, k, dtype=torch.int8, device=rows.device)
            qk.quantize_into(codes, rows.contiguous(), qk.INT8_CODES, in_scale)
        y = torch.empty(m, n, dtype=out_dtype if out_scale is None else torch.int8, device=rows.device)
        ig.int8_gemm_into(y, codes, codes_w.codes, col_scales, bias32, gelu=gelu, out_scale=out_scale,
                          value_dtype=out_dtype, form=form)
        return y

    return gemm


def fast_fp8_gemm(
    weight: torch.Tensor, bias: torch.Tensor | None, in_amax: float, gelu: bool, out_dtype: torch.dtype,
    form: GeluForm = "tanh",
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``int8_plan.fp8_gemm`` with its input cast in one Triton pass and the bias in cuBLASLt's epilogue
    (then the GELU of ``form`` when ``gelu``, one Triton pass); None where ``_scaled_mm`` does not
    apply (sizes not multiples of 16, float32 output)."""
    n, k = weight.shape
    if k % 16 or n % 16 or out_dtype not in (torch.float16, torch.bfloat16):
        return None
    codes_w = q.quantize_fp8_weights(weight)
    in_scale = q.fp8_input_scale(in_amax, weight.device)
    scale_value = float(in_scale)
    bias_out = None if bias is None else bias.to(out_dtype)

    def gemm(rows: torch.Tensor) -> torch.Tensor:
        m = rows.shape[0]
        codes = torch.zeros(_round_up(m, 16), k, dtype=torch.float8_e4m3fn, device=rows.device) if m % 16 else \
            torch.empty(m, k, dtype=torch.float8_e4m3fn, device=rows.device)
        qk.quantize_into(codes[:m], rows.contiguous(), qk.FP8_CODES, scale_value)
        y = torch._scaled_mm(codes, codes_w.codes.t(), scale_a=in_scale, scale_b=codes_w.scale, bias=bias_out,
                             out_dtype=out_dtype)[:m]
        return kernels.elementwise_gelu(y, form) if gelu else y

    return gemm


def fast_int8_attention(
    heads: int, has_mask: bool, qkv_scale: float, ctx_scale: float, dq_probs: float, out_type: torch.dtype
) -> Run:
    """``-imh`` attention on CUDA: ``quantization.int8_attention`` as one Triton kernel.  The QKV
    input may come as its int8 codes; ``out_type`` int8: the context is returned as its codes."""

    def attention(qkv: torch.Tensor, mask: torch.Tensor | None = None) -> Sequence[torch.Tensor]:
        mask_idx = mask[:, 0] if has_mask and mask is not None else None
        rows = qkv.flatten(2).contiguous()
        out = torch.empty(*rows.shape[:2], rows.shape[2] // 3, dtype=out_type, device=rows.device)
        int8_attention_into(out, rows, mask_idx, heads, qkv_scale, ctx_scale, dq_probs)
        return (out.unflatten(-1, (-1, 1, 1)),)

    return attention


def fast_int8_skip_layernorm(
    gamma: torch.Tensor, beta: torch.Tensor, bias: torch.Tensor | None, x_scale: float, skip_scale: float,
    out_scale: float, eps: float, out_type: torch.dtype,
) -> Run:
    """``-iln`` skip-LayerNorm on CUDA: ``quantization.int8_skip_layernorm`` as one Triton row pass.
    ``x`` and ``skip`` may come as their int8 codes; ``out_type`` int8: the output's codes."""

    def skip_layernorm(x: torch.Tensor, skip: torch.Tensor) -> Sequence[torch.Tensor]:
        axis = 2 if x.dim() == 5 else 1
        x_rows, skip_rows = x.movedim(axis, -1).contiguous(), skip.movedim(axis, -1).contiguous()
        out = torch.empty_like(x_rows, dtype=out_type)
        qk.int8_skip_layernorm_into(out, x_rows, skip_rows, gamma, beta, bias, x_scale, skip_scale, out_scale, eps)
        return (out.movedim(-1, axis),)

    return skip_layernorm
