"""The INT8 / FP8 engine's steps on CUDA: ``int8_plan``'s arithmetic with few passes over memory.

An INT8 or FP8 GEMM is one Triton tensor-core GEMM on weight codes made once at load (``int8_gemm``)
with the dequantize + bias, and the builder's GELU (tanh or erf) when fused, in its epilogue, behind
one quantize pass (``quant_kernels``) unless its producer already wrote the int8 / E4M3 codes.
``-iln`` skip-LayerNorm is one row pass; ``-imh`` attention is one Triton kernel with both products
on int8 codes (``int8_attention``).  Each producer writes what the plan hands over
(``int8_plan.Int8Lowering.handover``): float values, int8 codes or E4M3 codes, or (``-iln``) int8
and E4M3 codes of the same value, as two outputs of the one pass.  Imported by the
INT8 lowering on CUDA only: the kernels need Triton, which exists only on GPU machines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from helpers.portable import quantization as q
from helpers.portable.int8_plan import HandoverCodes, stored_dtype
from helpers.portable.kernels import int8_gemm as ig
from helpers.portable.kernels import quant_kernels as qk
from helpers.portable.kernels.int8_attention import int8_attention_into
from helpers.portable.ops import GeluForm

Run = Callable[..., Sequence[torch.Tensor]]


def fast_8bit_gemm(
    weight: torch.Tensor, bias: torch.Tensor | None, in_amax: float, fp8: bool, gelu: bool, out_dtype: torch.dtype,
    out_codes: HandoverCodes | None = None, form: GeluForm = "tanh",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``int8_plan.int8_gemm``, or ``int8_plan.fp8_gemm`` with ``fp8`` (then the GELU of ``form``
    when ``gelu``), as the Triton GEMM with the dequantize in its epilogue, behind one quantize pass,
    or none when given the input's codes (int8 codes of ``in_amax``'s INT8 grid, or its E4M3 codes).

    ``out_codes`` set: the output is the codes it names, from the ``out_dtype`` value the unfused
    steps would hand to the next layer's quantize pass.
    """
    if fp8:
        fp8_weight = q.quantize_fp8_weights(weight)
        weight_codes, weight_scales = fp8_weight.codes, fp8_weight.scale
        in_scale, in_type, in_mode = float(q.fp8_input_scale(in_amax, "cpu")), torch.float8_e4m3fn, qk.FP8_CODES
    else:
        int8_weight = q.quantize_linear_weights(weight)
        weight_codes, weight_scales = int8_weight.codes, int8_weight.scales
        in_scale, in_type, in_mode = q.scale_from_amax(in_amax), torch.int8, qk.INT8_CODES
    n, k = weight_codes.shape
    col_scales = (weight_scales * in_scale).contiguous()
    bias32 = None if bias is None else bias.float().contiguous()
    out_type = stored_dtype(out_codes, out_dtype)
    out_scale = None if out_codes is None else out_codes.scale

    def gemm(rows: torch.Tensor) -> torch.Tensor:
        m = rows.shape[0]
        if rows.dtype == in_type:
            codes = rows.contiguous()
        else:
            codes = torch.empty(m, k, dtype=in_type, device=rows.device)
            qk.quantize_into(codes, rows.contiguous(), in_mode, in_scale)
        y = torch.empty(m, n, dtype=out_type, device=rows.device)
        ig.int8_gemm_into(y, codes, weight_codes, col_scales, bias32, gelu=gelu, out_scale=out_scale,
                          value_dtype=out_dtype, form=form)
        return y

    return gemm


def e4m3_output(out_codes: HandoverCodes | None, out_dtype: torch.dtype) -> tuple[float | None, torch.dtype | None]:
    """The ``(fp8_scale, value_dtype)`` an INT8 kernel takes to write ``out_codes`` when they are E4M3
    codes (made from its INT8 values held in ``out_dtype``); ``(None, None)`` for any other output."""
    if out_codes is None or out_codes.dtype == torch.int8:
        return None, None
    return out_codes.scale, out_dtype


def fast_int8_attention(
    heads: int, has_mask: bool, qkv_scale: float, ctx_scale: float, dq_probs: float, out_dtype: torch.dtype,
    out_codes: HandoverCodes | None = None,
) -> Run:
    """``-imh`` attention on CUDA: ``quantization.int8_attention`` as one Triton kernel.  The QKV
    input may come as its int8 codes; the context is returned in ``out_dtype``, or as the codes
    ``out_codes`` names (of its ``out_dtype`` value)."""
    fp8_scale, value_dtype = e4m3_output(out_codes, out_dtype)
    stored = stored_dtype(out_codes, out_dtype)

    def attention(qkv: torch.Tensor, mask: torch.Tensor | None = None) -> Sequence[torch.Tensor]:
        mask_idx = mask[:, 0] if has_mask and mask is not None else None
        rows = qkv.flatten(2).contiguous()
        out = torch.empty(*rows.shape[:2], rows.shape[2] // 3, dtype=stored, device=rows.device)
        int8_attention_into(out, rows, mask_idx, heads, qkv_scale, ctx_scale, dq_probs, fp8_scale=fp8_scale,
                            value_dtype=value_dtype)
        return (out.unflatten(-1, (-1, 1, 1)),)

    return attention


def fast_int8_skip_layernorm(
    gamma: torch.Tensor, beta: torch.Tensor, bias: torch.Tensor | None, x_scale: float, skip_scale: float,
    out_scale: float, eps: float, out_dtype: torch.dtype, out_codes: HandoverCodes | None = None,
    fp8_copy: HandoverCodes | None = None,
) -> Run:
    """``-iln`` skip-LayerNorm on CUDA: ``quantization.int8_skip_layernorm`` as one Triton row pass.
    ``x`` and ``skip`` may come as their int8 codes; the output is returned in ``out_dtype``, or as
    the codes ``out_codes`` names (of its ``out_dtype`` value); with ``fp8_copy`` (E4M3 codes), those
    codes of the same value follow as a second output, written in the same pass."""
    fp8_scale, value_dtype = e4m3_output(fp8_copy or out_codes, out_dtype)
    stored = stored_dtype(out_codes, out_dtype)

    def skip_layernorm(x: torch.Tensor, skip: torch.Tensor) -> Sequence[torch.Tensor]:
        axis = 2 if x.dim() == 5 else 1
        x_rows, skip_rows = x.movedim(axis, -1).contiguous(), skip.movedim(axis, -1).contiguous()
        out = torch.empty_like(x_rows, dtype=stored)
        copy = None if fp8_copy is None else torch.empty_like(x_rows, dtype=fp8_copy.dtype)
        qk.int8_skip_layernorm_into(out, x_rows, skip_rows, gamma, beta, bias, x_scale, skip_scale, out_scale, eps,
                                    fp8_scale=fp8_scale, value_dtype=value_dtype, fp8_copy=copy)
        return tuple(t.movedim(-1, axis) for t in (out, copy) if t is not None)

    return skip_layernorm
