"""The BERT plugins of ``libnvinfer_plugin`` (docs/SPEC.md "Plugins"): fields, definitions and math.

A plugin is described once, in :data:`PLUGIN_DEFINITIONS`: its creator fields (names, types,
counts, required or not), how the fields turn into parameters, and its shape/type rule.  What a
plugin computes is looked up in ONE place, :func:`plugin_impl`, so a fast-kernel pass can replace
the reference math of ``ops.py`` without touching the rest of the engine.

Decisions where the portable engine differs from TensorRT on purpose (see README.md here):
* The fixed-length embedding plugin always emits the unfused mask index ``[B, 1]``: the packed
  fused-MHA mask exists only for TensorRT's SM-specific fused kernels, and the portable attention
  reads the mask index.
* INT8 (``type_id`` 2) plugins compute in FP16 in the reference plan; the engine's INT8 lowering
  (``int8_plan.py``) runs them on INT8 codes where their tensors have ranges.
* Attention runs for any sequence length and head size, and ``var_seqlen=1`` also in FP32: these
  TensorRT limits come from its fused kernels (FP16/INT8, H ≤ 64, S ≤ 512), not from the math.
  Likewise the varseqlen embedding embeds every token, where TensorRT's kernels skip positions
  past their sequence bucket (at most 384, so a 512-token sequence loses its tail there).
* The interleaved versions (QKV v3/v6, SkipLN v3/v4/v7/v8) live in ``plugins_interleaved.py``,
  which registers them through :func:`register_plugin` when imported.

The plugin objects, creators and registry of the TensorRT API are in ``plugin_registry.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from helpers.portable import ops
from helpers.portable.enums import DataType, PluginFieldType
from helpers.portable.layers import FLOAT_TYPES, TORCH_DTYPE, BuildError, Params, Shape, fmt_shape

EMB_LN = "CustomEmbLayerNormPluginDynamic"
QKV = "CustomQKVToContextPluginDynamic"
SKIP_LN = "CustomSkipLayerNormPluginDynamic"
# Tensor layouts of the plugin versions: fixed-length [S, B, E, 1, 1], packed tokens [T, E, 1, 1],
# interleaved [1, E, T, 1] (plugins_interleaved.py).
FIXED, PACKED, INTERLEAVED = "fixed", "packed", "interleaved"

_FIELD_NUMPY = {
    PluginFieldType.FLOAT16: np.float16,
    PluginFieldType.FLOAT32: np.float32,
    PluginFieldType.FLOAT64: np.float64,
    PluginFieldType.INT8: np.int8,
    PluginFieldType.INT16: np.int16,
    PluginFieldType.INT32: np.int32,
    PluginFieldType.CHAR: np.int8,
    PluginFieldType.INT64: np.int64,
}


# ----------------------------------------------------------------------------------------------
# Fields


class PluginField:
    """One creator attribute: a name, a buffer and its PluginFieldType (``tensorrt.PluginField``)."""

    def __init__(self, name: str = "", data: Any = None, type: PluginFieldType = PluginFieldType.UNKNOWN) -> None:
        if not isinstance(type, PluginFieldType):
            raise TypeError(f"PluginField type must be a PluginFieldType, got {type!r}")
        self.name = name
        self.type = type
        self.data = data

    @property
    def data(self) -> np.ndarray | None:
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = None if value is None else np.ascontiguousarray(np.asarray(value))

    @property
    def size(self) -> int:
        """Number of items in the buffer, as the bindings compute it (not bytes)."""
        return 0 if self._data is None else int(self._data.size)

    def __repr__(self) -> str:
        return f"PluginField(name={self.name!r}, type={self.type}, size={self.size})"


class PluginFieldCollection(list):
    """A list of PluginField (``tensorrt.PluginFieldCollection``)."""

    def __init__(self, fields: Iterable[PluginField] = ()) -> None:
        fields = list(fields)
        for field in fields:
            if not isinstance(field, PluginField):
                raise TypeError(f"PluginFieldCollection holds PluginField objects, got {field!r}")
        super().__init__(fields)


PluginFieldCollection_ = PluginFieldCollection


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: PluginFieldType
    required: bool = True
    count: int | None = 1  # None: an array (its length is checked by the plugin's rule)
    # extra tags read with ``type``'s layout, because the demo sends them that way (var_seqlen)
    also_tagged: tuple[PluginFieldType, ...] = ()


class PluginError(ValueError):
    """create_plugin refused the fields; TensorRT logs this and returns None."""


def _read_fields(plugin: str, specs: Sequence[FieldSpec], fields: Iterable[PluginField]) -> dict[str, np.ndarray]:
    """Fields by name, reinterpreted with the declared type's layout (the C++ creators cast pointers)."""
    by_name = {spec.name: spec for spec in specs}
    values: dict[str, np.ndarray] = {}
    for field in fields:
        spec = by_name.get(field.name)
        if spec is None:  # the C++ creators skip attributes they do not declare
            continue
        if field.type != spec.type and field.type not in spec.also_tagged:
            raise PluginError(f"{plugin}: field '{field.name}' must be {spec.type}, got {field.type}")
        data = field.data
        if data is None or data.size == 0:
            raise PluginError(f"{plugin}: field '{field.name}' has no data")
        layout = np.dtype(_FIELD_NUMPY[spec.type])
        if data.dtype.itemsize != layout.itemsize or data.dtype.kind not in "fiub":
            raise PluginError(
                f"{plugin}: field '{field.name}' holds {data.dtype} data, but {field.type} needs "
                f"{layout.itemsize}-byte items"
            )
        value = np.frombuffer(data.tobytes(), dtype=layout)
        if spec.count is not None and value.size != spec.count:
            raise PluginError(f"{plugin}: field '{field.name}' must have {spec.count} value(s), got {value.size}")
        values[field.name] = value
    for spec in specs:
        if spec.required and spec.name not in values:
            raise PluginError(f"{plugin}: required field '{spec.name}' is missing")
    return values


def _scalar(values: dict[str, np.ndarray], name: str, default: float | int | None = None) -> Any:
    if name not in values:
        return default
    return values[name][0].item()


def _choice(plugin: str, name: str, value: int, allowed: Sequence[int]) -> int:
    if value not in allowed:
        raise PluginError(f"{plugin}: field '{name}' must be one of {list(allowed)}, got {value}")
    return value


# ----------------------------------------------------------------------------------------------
# Plugin definitions: fields -> params, shape/type rule


@dataclass(frozen=True)
class PluginDefinition:
    name: str
    version: str
    v3: bool
    fields: tuple[FieldSpec, ...]
    num_outputs: int
    parse: Callable[[str, dict[str, np.ndarray]], Params]
    infer: Callable[[Params, Sequence[Shape], Sequence[DataType]], list[tuple[Shape, DataType]]]
    weights: tuple[str, ...]  # array fields the compute function receives as tensors
    layout: str = FIXED  # FIXED, PACKED or INTERLEAVED
    megatron: bool = False  # Megatron's embedding / skip-LayerNorm: a second output, the pre-LN sum


_EMB_WEIGHTS = (
    "bert_embeddings_layernorm_beta",
    "bert_embeddings_layernorm_gamma",
    "bert_embeddings_word_embeddings",
    "bert_embeddings_token_type_embeddings",
    "bert_embeddings_position_embeddings",
)
_EMB_FIELDS = tuple(FieldSpec(name, PluginFieldType.FLOAT32, count=None) for name in _EMB_WEIGHTS) + (
    FieldSpec("output_fp16", PluginFieldType.INT32, required=False),
)


def _parse_emb(plugin: str, values: dict[str, np.ndarray]) -> Params:
    hidden = values["bert_embeddings_layernorm_beta"].size
    if values["bert_embeddings_layernorm_gamma"].size != hidden:
        raise PluginError(f"{plugin}: gamma has {values['bert_embeddings_layernorm_gamma'].size} values, beta {hidden}")
    for name in _EMB_WEIGHTS[2:]:
        if values[name].size % hidden:
            raise PluginError(f"{plugin}: '{name}' has {values[name].size} values, not a multiple of E={hidden}")
    output_fp16 = _choice(plugin, "output_fp16", _scalar(values, "output_fp16", 0), (0, 1))
    params: Params = {"hidden_size": hidden, "output_type": int(DataType.HALF if output_fp16 else DataType.FLOAT)}
    params["vocab_sizes"] = {name: values[name].size // hidden for name in _EMB_WEIGHTS[2:]}
    return params


def _parse_emb_fixed(plugin: str, values: dict[str, np.ndarray]) -> Params:
    params = _parse_emb(plugin, values)
    params["mha_type_id"] = _choice(plugin, "mha_type_id", _scalar(values, "mha_type_id", 0), (0, 1, 2, 3))
    # full_mask asks for the packed fused-MHA mask, which the portable attention never reads.
    params["full_mask"] = _choice(plugin, "full_mask", _scalar(values, "full_mask", 0), (0, 1))
    return params


def _require(cond: bool, plugin: str, message: str) -> None:
    if not cond:
        raise BuildError(f"{plugin}: {message}")


def _check_int_inputs(plugin: str, dtypes: Sequence[DataType], indices: Iterable[int]) -> None:
    for i in indices:
        _require(dtypes[i] == DataType.INT32, plugin, f"input {i} must be INT32, got {dtypes[i].name}")


def _infer_emb_fixed(p: Params, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
    plugin = f"{EMB_LN} {p['instance']}"
    _require(len(shapes) == 3, plugin, f"expects 3 inputs (input_ids, segment_ids, input_mask), got {len(shapes)}")
    _check_int_inputs(plugin, dtypes, range(3))
    for i, shape in enumerate(shapes):
        _require(len(shape) == 2, plugin, f"input {i} must be [S, B], got {fmt_shape(shape)}")
    _require(shapes[0] == shapes[1] == shapes[2], plugin, f"inputs differ in shape: {list(map(fmt_shape, shapes))}")
    seq, batch = shapes[0]
    out_type = DataType(p["output_type"])
    return [((seq, batch, p["hidden_size"], 1, 1), out_type), ((batch, 1), DataType.INT32)]


def _infer_emb_varseqlen(
    megatron: bool,
) -> Callable[[Params, Sequence[Shape], Sequence[DataType]], list[tuple[Shape, DataType]]]:
    def infer(p: Params, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
        plugin = f"{EMB_LN} {p['instance']}"
        _require(
            len(shapes) == 4, plugin, f"expects 4 inputs (input_ids, segment_ids, cu_seqlens, max_seqlen), got {len(shapes)}"
        )
        _check_int_inputs(plugin, dtypes, range(3))
        for i, shape in enumerate(shapes):
            _require(len(shape) == 1, plugin, f"input {i} must be 1-D, got {fmt_shape(shape)}")
        _require(shapes[0] == shapes[1], plugin, f"input_ids {fmt_shape(shapes[0])} != segment_ids {fmt_shape(shapes[1])}")
        tokens = shapes[0][0]
        out_type = DataType(p["output_type"])
        embeddings = ((tokens, p["hidden_size"], 1, 1), out_type)
        second = ((tokens, p["hidden_size"], 1, 1), out_type) if megatron else ((), DataType.INT32)
        return [embeddings, second]

    return infer


_QKV_FIELDS = (
    FieldSpec("type_id", PluginFieldType.INT32),
    FieldSpec("hidden_size", PluginFieldType.INT32),
    FieldSpec("num_heads", PluginFieldType.INT32),
    FieldSpec("has_mask", PluginFieldType.INT32),
    FieldSpec("dq_probs", PluginFieldType.FLOAT32, required=False),
)
_QKV_VARSEQLEN_FIELDS = _QKV_FIELDS + (
    FieldSpec("var_seqlen", PluginFieldType.INT32, required=False, also_tagged=(PluginFieldType.FLOAT32,)),
    FieldSpec("use_int8_scale_max", PluginFieldType.INT32, required=False),
)


def _parse_qkv(plugin: str, values: dict[str, np.ndarray]) -> Params:
    type_id = _choice(plugin, "type_id", _scalar(values, "type_id"), (0, 1, 2))
    hidden = _scalar(values, "hidden_size")
    heads = _scalar(values, "num_heads")
    if hidden <= 0 or heads <= 0:
        raise PluginError(f"{plugin}: hidden_size ({hidden}) and num_heads ({heads}) must be > 0")
    if hidden % heads:
        raise PluginError(f"{plugin}: hidden_size {hidden} is not a multiple of num_heads {heads}")
    dq_probs = _scalar(values, "dq_probs", 1.0 / 127.0)
    if not dq_probs > 0:
        raise PluginError(f"{plugin}: dq_probs must be > 0, got {dq_probs}")
    return {
        "type_id": type_id,
        "hidden_size": hidden,
        "num_heads": heads,
        "has_mask": _choice(plugin, "has_mask", _scalar(values, "has_mask"), (0, 1)),
        "dq_probs": dq_probs,
        "var_seqlen": 0,
    }


def _parse_qkv_varseqlen(plugin: str, values: dict[str, np.ndarray]) -> Params:
    params = _parse_qkv(plugin, values)
    params["var_seqlen"] = _choice(plugin, "var_seqlen", _scalar(values, "var_seqlen", 0), (0, 1))
    params["use_int8_scale_max"] = _choice(plugin, "use_int8_scale_max", _scalar(values, "use_int8_scale_max", 1), (0, 1))
    return params


def compute_type(type_id: int) -> DataType:
    """The type a plugin's reference step computes in: INT8 as FP16 (the INT8 lowering replaces
    those steps where the tensors have ranges)."""
    return DataType.FLOAT if type_id == int(DataType.FLOAT) else DataType.HALF


def _infer_qkv(p: Params, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
    plugin = f"{QKV} {p['instance']}"
    hidden = p["hidden_size"]
    if p["var_seqlen"]:
        _require(
            len(shapes) == 4, plugin, f"var_seqlen expects 4 inputs (qkv, mask, cu_seqlens, max_seqlen), got {len(shapes)}"
        )
        _check_int_inputs(plugin, dtypes, (2,))
        _require(len(shapes[0]) == 4, plugin, f"var_seqlen input 0 must be [T, 3E, 1, 1], got {fmt_shape(shapes[0])}")
        _require(len(shapes[2]) == 1 and len(shapes[3]) == 1, plugin, "cu_seqlens and max_seqlen must be 1-D")
        axis = 1
    else:
        expected = 2 if p["has_mask"] else 1
        _require(len(shapes) == expected, plugin, f"has_mask={p['has_mask']} expects {expected} input(s), got {len(shapes)}")
        _require(len(shapes[0]) == 5, plugin, f"input 0 must be [S, B, 3E, 1, 1], got {fmt_shape(shapes[0])}")
        if p["has_mask"]:
            _check_int_inputs(plugin, dtypes, (1,))
            mask = shapes[1]
            _require(len(mask) == 2, plugin, f"mask index must be [B, packSize], got {fmt_shape(mask)}")
            _require(
                mask[1] in (1, -1),
                plugin,
                f"{EMB_LN} returned mask with pack size {mask[1]}, but {QKV} expects pack size 1",
            )
        axis = 2
    _require(dtypes[0] in FLOAT_TYPES + (DataType.INT8,), plugin, f"input 0 must be a float type, got {dtypes[0].name}")
    _require(
        shapes[0][axis] in (3 * hidden, -1),
        plugin,
        f"input 0 {fmt_shape(shapes[0])} must have 3*hidden_size = {3 * hidden} at axis {axis}",
    )
    out = list(shapes[0])
    out[axis] = hidden
    return [(tuple(out), DataType(p["type_id"]))]


_SKIP_FIELDS_FIXED = (
    FieldSpec("ld", PluginFieldType.INT32),
    FieldSpec("type_id", PluginFieldType.INT32),
    FieldSpec("beta", PluginFieldType.FLOAT32, count=None),
    FieldSpec("gamma", PluginFieldType.FLOAT32, count=None),
    FieldSpec("bias", PluginFieldType.FLOAT32, required=False, count=None),
)
_SKIP_FIELDS_VARSEQLEN = _SKIP_FIELDS_FIXED[1:]


def _parse_skip(plugin: str, values: dict[str, np.ndarray], hidden: int) -> Params:
    if hidden <= 0:
        raise PluginError(f"{plugin}: ld must be > 0, got {hidden}")
    for name in ("beta", "gamma", "bias"):
        if name in values and values[name].size != hidden:
            raise PluginError(f"{plugin}: field '{name}' has {values[name].size} values, expected {hidden}")
    return {
        "hidden_size": hidden,
        "type_id": _choice(plugin, "type_id", _scalar(values, "type_id"), (0, 1, 2)),
        "has_bias": int("bias" in values),
    }


def _parse_skip_fixed(plugin: str, values: dict[str, np.ndarray]) -> Params:
    return _parse_skip(plugin, values, _scalar(values, "ld"))


def _parse_skip_varseqlen(plugin: str, values: dict[str, np.ndarray]) -> Params:
    return _parse_skip(plugin, values, values["beta"].size)


def _infer_skip(rank: int) -> Callable[[Params, Sequence[Shape], Sequence[DataType]], list[tuple[Shape, DataType]]]:
    axis = 2 if rank == 5 else 1
    layout = "[S, B, E, 1, 1]" if rank == 5 else "[T, E, 1, 1]"

    def infer(p: Params, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
        plugin = f"{SKIP_LN} {p['instance']}"
        _require(len(shapes) == 2, plugin, f"expects 2 inputs (input, skip), got {len(shapes)}")
        for i, shape in enumerate(shapes):
            _require(len(shape) == rank, plugin, f"input {i} must be {layout}, got {fmt_shape(shape)}")
            _require(
                shape[axis] in (p["hidden_size"], -1),
                plugin,
                f"input {i} {fmt_shape(shape)} must have E = {p['hidden_size']} at axis {axis}",
            )
            _require(dtypes[i] in FLOAT_TYPES + (DataType.INT8,), plugin, f"input {i} must be a float type")
        _require(shapes[0] == shapes[1], plugin, f"input {fmt_shape(shapes[0])} and skip {fmt_shape(shapes[1])} differ")
        return [(shapes[0], DataType(p["type_id"]))]

    return infer


def _definitions() -> list[PluginDefinition]:
    emb_fixed_fields = _EMB_FIELDS + (
        FieldSpec("full_mask", PluginFieldType.INT32, required=False),
        FieldSpec("mha_type_id", PluginFieldType.INT32, required=False),
    )
    defs = []
    for version, v3 in (("1", False), ("6", True)):
        defs.append(
            PluginDefinition(EMB_LN, version, v3, emb_fixed_fields, 2, _parse_emb_fixed, _infer_emb_fixed, _EMB_WEIGHTS)
        )
    for version, v3, megatron in (("2", False, False), ("4", True, False), ("3", False, True), ("5", True, True)):
        defs.append(
            PluginDefinition(
                EMB_LN, version, v3, _EMB_FIELDS, 2, _parse_emb, _infer_emb_varseqlen(megatron), _EMB_WEIGHTS,
                PACKED, megatron,
            )
        )
    for version, v3 in (("1", False), ("4", True)):
        defs.append(PluginDefinition(QKV, version, v3, _QKV_FIELDS, 1, _parse_qkv, _infer_qkv, ()))
    for version, v3 in (("2", False), ("5", True)):
        defs.append(
            PluginDefinition(QKV, version, v3, _QKV_VARSEQLEN_FIELDS, 1, _parse_qkv_varseqlen, _infer_qkv, (), PACKED)
        )
    skip_weights = ("beta", "gamma", "bias")
    for version, v3 in (("1", False), ("5", True)):
        defs.append(
            PluginDefinition(SKIP_LN, version, v3, _SKIP_FIELDS_FIXED, 1, _parse_skip_fixed, _infer_skip(5), skip_weights)
        )
    for version, v3 in (("2", False), ("6", True)):
        defs.append(
            PluginDefinition(
                SKIP_LN, version, v3, _SKIP_FIELDS_VARSEQLEN, 1, _parse_skip_varseqlen, _infer_skip(4), skip_weights,
                PACKED,
            )
        )
    return defs


PLUGIN_DEFINITIONS: dict[tuple[str, str], PluginDefinition] = {(d.name, d.version): d for d in _definitions()}


# ----------------------------------------------------------------------------------------------
# Compute: reference math from ops.py.  plugin_impl() is the single dispatch point.

Tensors = tuple[torch.Tensor, ...]


def _embed_layernorm(
    w: dict[str, torch.Tensor], ids: torch.Tensor, segs: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ops.embed_layernorm over the embedding plugins' weight fields: (normalized, summed)."""
    return ops.embed_layernorm(
        ids,
        segs,
        positions,
        w["bert_embeddings_word_embeddings"],
        w["bert_embeddings_token_type_embeddings"],
        w["bert_embeddings_position_embeddings"],
        w["bert_embeddings_layernorm_gamma"],
        w["bert_embeddings_layernorm_beta"],
    )


def emb_layernorm_fixed(p: Params, w: dict[str, torch.Tensor], ids: torch.Tensor, segs: torch.Tensor, mask: torch.Tensor) -> Tensors:
    seq, batch = ids.shape
    positions = torch.arange(seq, device=ids.device, dtype=torch.int32).unsqueeze(1).expand(seq, batch)
    normed, _ = _embed_layernorm(w, ids, segs, positions)
    return normed.unflatten(-1, (-1, 1, 1)), ops.mask_index(mask).unsqueeze(1)


def _packed_positions(cu_seqlens: torch.Tensor, tokens: int) -> torch.Tensor:
    """Position of every packed token in its sequence; -1 (skipped) past the last sequence."""
    positions = ops.varlen_position_ids(cu_seqlens, tokens)
    index = torch.arange(tokens, device=cu_seqlens.device)
    return torch.where(index < cu_seqlens[-1].long(), positions, -1)


def emb_layernorm_varseqlen(megatron: bool) -> Callable[..., Tensors]:
    def run(
        p: Params, w: dict[str, torch.Tensor], ids: torch.Tensor, segs: torch.Tensor, cu: torch.Tensor, dummy: torch.Tensor
    ) -> Tensors:
        positions = _packed_positions(cu, ids.shape[0])
        normed, summed = _embed_layernorm(w, ids, segs, positions)
        if megatron:
            return normed.unflatten(-1, (-1, 1, 1)), summed.unflatten(-1, (-1, 1, 1))
        return normed.unflatten(-1, (-1, 1, 1)), torch.zeros((), dtype=torch.int32, device=ids.device)

    return run


def qkv_to_context_fixed(p: Params, w: dict[str, torch.Tensor], qkv: torch.Tensor, mask: torch.Tensor | None = None) -> Tensors:
    mask_idx = None if mask is None else mask[:, 0]
    ctx = ops.attention_fixed(qkv.flatten(2), mask_idx, p["num_heads"])
    return (ctx.unflatten(-1, (-1, 1, 1)),)


def qkv_to_context_varseqlen(
    p: Params, w: dict[str, torch.Tensor], qkv: torch.Tensor, mask: torch.Tensor, cu: torch.Tensor, dummy: torch.Tensor
) -> Tensors:
    """Pads the packed tokens to [maxS, B] (shapes known on the host), runs the fixed attention."""
    if not p["var_seqlen"]:
        return qkv_to_context_fixed(p, w, qkv, mask if p["has_mask"] else None)
    tokens, batch, max_len = qkv.shape[0], cu.shape[0] - 1, dummy.shape[0]
    starts = cu[:-1].long()
    lengths = torch.clamp(cu[1:].long() - starts, min=0, max=max_len)
    slot = torch.arange(max_len, device=qkv.device).unsqueeze(1)  # [maxS, 1]
    valid = slot < lengths.unsqueeze(0)  # [maxS, B]
    index = torch.where(valid, starts.unsqueeze(0) + slot, 0)
    packed = qkv.flatten(1)
    padded = torch.where(valid.unsqueeze(-1), packed[index], 0)  # [maxS, B, 3E]
    ctx = ops.attention_fixed(padded, lengths.to(torch.int32), p["num_heads"])  # [maxS, B, E]
    out = torch.zeros(tokens + 1, ctx.shape[-1], dtype=ctx.dtype, device=qkv.device)
    out.index_copy_(0, torch.where(valid, index, tokens).flatten(), ctx.flatten(0, 1))
    return (out[:tokens].unflatten(-1, (-1, 1, 1)),)


def skip_layernorm(p: Params, w: dict[str, torch.Tensor], x: torch.Tensor, skip: torch.Tensor) -> Tensors:
    hidden_axis = 2 if x.dim() == 5 else 1
    eps = ops.skip_layernorm_eps(p["hidden_size"], TORCH_DTYPE[compute_type(p["type_id"])])
    normed, _ = ops.skip_layernorm(
        x.movedim(hidden_axis, -1), skip.movedim(hidden_axis, -1), w["gamma"], w["beta"], w.get("bias"), eps
    )
    return (normed.movedim(-1, hidden_axis),)


_IMPLS: dict[tuple[str, str], Callable[..., Tensors]] = {
    (EMB_LN, "1"): emb_layernorm_fixed,
    (EMB_LN, "6"): emb_layernorm_fixed,
    (EMB_LN, "2"): emb_layernorm_varseqlen(megatron=False),
    (EMB_LN, "4"): emb_layernorm_varseqlen(megatron=False),
    (EMB_LN, "3"): emb_layernorm_varseqlen(megatron=True),
    (EMB_LN, "5"): emb_layernorm_varseqlen(megatron=True),
    (QKV, "1"): qkv_to_context_fixed,
    (QKV, "4"): qkv_to_context_fixed,
    (QKV, "2"): qkv_to_context_varseqlen,
    (QKV, "5"): qkv_to_context_varseqlen,
    (SKIP_LN, "1"): skip_layernorm,
    (SKIP_LN, "5"): skip_layernorm,
    (SKIP_LN, "2"): skip_layernorm,
    (SKIP_LN, "6"): skip_layernorm,
}


def plugin_impl(name: str, version: str) -> Callable[..., Tensors]:
    """The compute function of a plugin: ``fn(params, weights, *inputs) -> outputs``."""
    return _IMPLS[(name, version)]


def register_plugin(definition: PluginDefinition, impl: Callable[..., Tensors]) -> None:
    """Add a plugin version defined outside this module (``plugins_interleaved`` does when imported;
    the registry and the engine loader import it)."""
    key = (definition.name, definition.version)
    PLUGIN_DEFINITIONS[key] = definition
    _IMPLS[key] = impl


def plugin_weights(definition: PluginDefinition, params: Params, values: dict[str, np.ndarray], dev: torch.device) -> dict[str, torch.Tensor]:
    """The weight fields as device tensors, converted once at engine load.

    Embedding tables become [rows, E] in the output type; LayerNorm parameters stay float
    (docs/SPEC.md "Embedding plugin", "Skip-LayerNorm plugin").
    """
    weights = {}
    for key in definition.weights:
        if key not in values:
            continue
        tensor = torch.from_numpy(values[key].copy())
        if definition.name == EMB_LN and key.endswith("_embeddings"):
            tensor = tensor.reshape(-1, params["hidden_size"]).to(TORCH_DTYPE[DataType(params["output_type"])])
        weights[key] = tensor.to(dev)
    return weights


def plugin_output_types(params: Params, declared: Sequence[DataType], input_types: Sequence[DataType]) -> list[DataType]:
    """Types the plugin's outputs have at run time.

    Plugins with a ``type_id``/``output_fp16`` field produce that type (INT8 computes as FP16);
    the others produce float outputs in the type of their first input.
    """
    if "type_id" in params or "output_type" in params:
        return [DataType.HALF if d == DataType.INT8 else d for d in declared]
    return [input_types[0] if d in FLOAT_TYPES and input_types[0] in FLOAT_TYPES else d for d in declared]


def plugin_input_types(name: str, params: Params, count: int) -> list[DataType | None]:
    """The type each input is converted to before the compute function (None: as given)."""
    if name == EMB_LN or "type_id" not in params:
        return [None] * count
    compute = compute_type(params["type_id"])
    if name == QKV:
        return [compute] + [None] * (count - 1)
    return [compute] * count


def parse_plugin(definition: PluginDefinition, name: str, fields: Iterable[PluginField]) -> tuple[Params, dict[str, np.ndarray]]:
    """Validated parameters and field values of a plugin instance; raises PluginError."""
    values = _read_fields(f"{definition.name} version {definition.version}", definition.fields, fields)
    params = definition.parse(f"{definition.name} version {definition.version}", values)
    params["instance"] = name
    return params, values
