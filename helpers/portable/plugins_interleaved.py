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

from collections.abc import Callable, Sequence

import numpy as np
import torch

from helpers.portable import kernels, ops
from helpers.portable.enums import DataType, PluginFieldType
from helpers.portable.layers import FLOAT_TYPES, BuildError, Params, Shape, fmt_shape
from helpers.portable.plugins import (
    INTERLEAVED,
    QKV,
    SKIP_LN,
    FieldSpec,
    PluginDefinition,
    PluginError,
    Tensors,
    register_plugin,
)


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
    x_tokens, skip_tokens = channels_last(x), channels_last(skip).to(x.dtype)
    if x_tokens.shape != skip_tokens.shape:
        raise ValueError(f"skip-LayerNorm inputs differ in shape: {tuple(x.shape)} and {tuple(skip.shape)}")
    eps = ops.skip_layernorm_eps(x_tokens.shape[1], x_tokens.dtype)
    impl = kernels if x_tokens.is_cuda else ops
    normalized, summed = impl.skip_layernorm(x_tokens, skip_tokens, gamma, beta, None, eps)
    return channels_first(normalized), channels_first(summed)


# ----------------------------------------------------------------------------------------------
# Plugin definitions (fields, shape/type rules) and registration


_QKV_FIELDS = (
    FieldSpec("hidden_size", PluginFieldType.INT32),
    FieldSpec("num_heads", PluginFieldType.INT32),
    FieldSpec("dq_probs", PluginFieldType.FLOAT32, required=False),
    FieldSpec("use_int8_scale_max", PluginFieldType.INT32, required=False),
    FieldSpec("use_explicit_int8", PluginFieldType.INT32, required=False),
    FieldSpec("input_qkv_scale", PluginFieldType.FLOAT32, required=False),
    FieldSpec("output_ctx_scale", PluginFieldType.FLOAT32, required=False),
)
_SKIP_FIELDS = (
    FieldSpec("beta", PluginFieldType.FLOAT32, count=None),
    FieldSpec("gamma", PluginFieldType.FLOAT32, count=None),
)
_INT8_PROBS_SCALE = 1.0 / 127.0


def _parse_qkv(plugin: str, values: dict[str, np.ndarray]) -> Params:
    hidden, heads = int(values["hidden_size"][0]), int(values["num_heads"][0])
    if hidden <= 0 or heads <= 0 or hidden % heads:
        raise PluginError(f"{plugin}: hidden_size ({hidden}) must be a positive multiple of num_heads ({heads})")
    dq_probs = float(values["dq_probs"][0]) if "dq_probs" in values else _INT8_PROBS_SCALE
    if dq_probs <= 0:
        raise PluginError(f"{plugin}: field 'dq_probs' must be > 0, got {dq_probs}")
    return {"hidden_size": hidden, "num_heads": heads, "dq_probs": dq_probs}


def _parse_skip(plugin: str, values: dict[str, np.ndarray]) -> Params:
    hidden = values["beta"].size
    if values["gamma"].size != hidden:
        raise PluginError(f"{plugin}: gamma has {values['gamma'].size} values, beta {hidden}")
    return {"hidden_size": hidden}


def _check_interleaved(plugin: str, index: int, shape: Shape, dtype: DataType, channels: int) -> None:
    if len(shape) != 4 or shape[0] not in (1, -1) or shape[3] not in (1, -1) or shape[1] not in (channels, -1):
        raise BuildError(f"{plugin}: input {index} must be [1, {channels}, T, 1], got {fmt_shape(shape)}")
    if dtype not in FLOAT_TYPES + (DataType.INT8,):
        raise BuildError(f"{plugin}: input {index} must be FLOAT, HALF or INT8, got {dtype.name}")


def _infer_qkv(p: Params, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
    plugin = f"{QKV} {p['instance']}"
    if len(shapes) != 3:
        raise BuildError(f"{plugin}: expects 3 inputs (qkv, cu_seqlens, max_seqlen), got {len(shapes)}")
    hidden = p["hidden_size"]
    _check_interleaved(plugin, 0, shapes[0], dtypes[0], 3 * hidden)
    for index in (1, 2):
        if len(shapes[index]) != 1:
            raise BuildError(f"{plugin}: input {index} must be 1-D, got {fmt_shape(shapes[index])}")
    if dtypes[1] != DataType.INT32:
        raise BuildError(f"{plugin}: cu_seqlens must be INT32, got {dtypes[1].name}")
    return [((1, hidden, shapes[0][2], 1), dtypes[0])]


def _infer_skip(outputs: int) -> Callable[[Params, Sequence[Shape], Sequence[DataType]], list[tuple[Shape, DataType]]]:
    def infer(p: Params, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
        plugin = f"{SKIP_LN} {p['instance']}"
        if len(shapes) != 2:
            raise BuildError(f"{plugin}: expects 2 inputs (input, skip), got {len(shapes)}")
        for index in (0, 1):
            _check_interleaved(plugin, index, shapes[index], dtypes[index], p["hidden_size"])
        # Declared types may differ (e.g. an INT8 range on one side): the engine converts at run time.
        if shapes[0] != shapes[1]:
            raise BuildError(f"{plugin}: input {fmt_shape(shapes[0])} and skip {fmt_shape(shapes[1])} differ")
        return [(shapes[0], dtypes[0])] * outputs

    return infer


def _qkv_impl(p: Params, w: dict[str, torch.Tensor], qkv: torch.Tensor, cu: torch.Tensor, dummy: torch.Tensor) -> Tensors:
    return (attention_interleaved(qkv, cu, p["num_heads"], dummy.shape[0]),)


def _skip_impl(outputs: int) -> Callable[..., Tensors]:
    def run(p: Params, w: dict[str, torch.Tensor], x: torch.Tensor, skip: torch.Tensor) -> Tensors:
        return skip_layernorm_interleaved(x, skip, w["gamma"], w["beta"])[:outputs]

    return run


def _register() -> None:
    for version, v3 in (("3", False), ("6", True)):
        definition = PluginDefinition(QKV, version, v3, _QKV_FIELDS, 1, _parse_qkv, _infer_qkv, (), INTERLEAVED)
        register_plugin(definition, _qkv_impl)
    # HFace: v3 / v7 (one output); Megatron: v4 / v8 (LN result and pre-LN sum).
    for version, v3, outputs in (("3", False, 1), ("7", True, 1), ("4", False, 2), ("8", True, 2)):
        definition = PluginDefinition(SKIP_LN, version, v3, _SKIP_FIELDS, outputs, _parse_skip, _infer_skip(outputs),
                                      ("beta", "gamma"), INTERLEAVED, megatron=outputs == 2)
        register_plugin(definition, _skip_impl(outputs))


_register()
