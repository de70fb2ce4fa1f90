"""The schema of a portable engine's JSON header, checked whenever an engine file is read.

The checksum only proves that the bytes are the ones written; a crafted file can carry a valid
checksum over any JSON.  :func:`validate_header` checks everything the runtime relies on before
any of it is used: the shape of the document (no deeper than real headers), the array table
against the payload, tensor slots, enum values, per-kind layer parameters (through the same shape
rules the builder applies, on the shapes the header declares), the profiles and the build record.
Each failure is an :class:`EngineFormatError` whose one-line message names the entry and what is
wrong with it.  Plugin fields are checked by the plugin's own parser when the engine is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from helpers.portable.enums import (
    ActivationType,
    BuilderFlag,
    DataType,
    ElementWiseOperation,
    LayerType,
    PluginFieldType,
    ProfilingVerbosity,
    QuantizationFlag,
    UnaryOperation,
)
from helpers.portable.layers import INFER, TORCH_DTYPE, BuildError

# Real headers nest 6 levels (header > layers > layer > params > fields > field > array reference).
MAX_DEPTH = 16
MAX_RANK = 8


class EngineFormatError(ValueError):
    """The bytes are not a usable portable engine; the message is the one-line reason."""


def _fail(where: str, what: str) -> EngineFormatError:
    return EngineFormatError(f"corrupt portable engine: {where}: {what}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _depth(document: Any) -> int:
    """Nesting depth of a JSON document, without recursion."""
    deepest = 0
    pending = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        pending.extend((child, depth + 1) for child in children)
    return deepest


def _field(container: dict[str, Any], key: str, where: str, check: Callable[[Any], bool], kind: str) -> Any:
    if key not in container:
        raise _fail(where, f"missing {key!r}")
    value = container[key]
    if not check(value):
        raise _fail(where, f"{key!r} must be {kind}, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int_list(value: Any, low: int, high: int | None = None, max_len: int = MAX_RANK) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= max_len
        and all(_is_int(v) and v >= low and (high is None or v <= high) for v in value)
    )


def _enum_value(enum_type: type) -> Callable[[Any], bool]:
    values = {member.value for member in enum_type}  # type: ignore[attr-defined]
    return lambda value: _is_int(value) and value in values


def _enum_name(enum_type: type) -> Callable[[Any], bool]:
    names = set(enum_type.__members__)  # type: ignore[attr-defined]
    return lambda value: isinstance(value, str) and value in names


_DATA_TYPE = _enum_value(DataType)


def _runtime_data_type(value: Any) -> bool:
    return _DATA_TYPE(value) and DataType(value) in TORCH_DTYPE


# ----------------------------------------------------------------------------------------------
# Arrays


def _check_arrays(table: list[Any], payload_nbytes: int) -> list[int]:
    """Element count of every array of the table, after checking it against the payload."""
    counts = []
    for index, entry in enumerate(table):
        where = f"arrays[{index}]"
        if not isinstance(entry, dict):
            raise _fail(where, f"not an object: {_show(entry)}")
        offset = _field(entry, "offset", where, lambda v: _is_int(v) and v >= 0, "a byte offset")
        shape = _field(entry, "shape", where, lambda v: _int_list(v, 0), f"a list of at most {MAX_RANK} sizes")
        name = _field(entry, "dtype", where, lambda v: isinstance(v, str), "a numpy dtype string")
        try:
            dtype = np.dtype(name)
        except TypeError:
            raise _fail(where, f"unknown dtype {name!r}") from None
        if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
            raise _fail(where, f"dtype {name!r} is not a numeric dtype")
        count = math.prod(shape)
        if offset + count * dtype.itemsize > payload_nbytes:
            raise _fail(where, f"{count} x {dtype.itemsize} bytes at offset {offset} run past the {payload_nbytes}-byte payload")
        counts.append(count)
    return counts


def _check_array_references(document: Any, counts: list[int]) -> None:
    pending = [(document, "header")]
    while pending:
        value, where = pending.pop()
        if isinstance(value, dict):
            if "__array__" in value:
                index = value["__array__"]
                if set(value) != {"__array__"} or not _is_int(index) or not 0 <= index < len(counts):
                    raise _fail(where, f"bad array reference {_show(value)} (the table has {len(counts)} arrays)")
                continue
            pending.extend((child, f"{where}.{key}") for key, child in value.items())
        elif isinstance(value, list):
            pending.extend((child, f"{where}[{i}]") for i, child in enumerate(value))


def _array_count(value: Any, counts: list[int]) -> int | None:
    """Element count of an array reference, None when ``value`` is not one."""
    if isinstance(value, dict) and set(value) == {"__array__"}:
        return counts[value["__array__"]]
    return None


# ----------------------------------------------------------------------------------------------
# Tensors, layers, profiles, build record


def _check_tensors(tensors: list[Any]) -> None:
    for slot, tensor in enumerate(tensors):
        where = f"tensors[{slot}]"
        if not isinstance(tensor, dict):
            raise _fail(where, f"not an object: {_show(tensor)}")
        _field(tensor, "name", where, lambda v: isinstance(v, str), "a string")
        _field(tensor, "shape", where, lambda v: _int_list(v, -1), f"a list of at most {MAX_RANK} dimensions (-1 for dynamic)")
        _field(tensor, "dtype", where, _runtime_data_type, "a DataType the portable engine runs")
        _field(tensor, "runtime_dtype", where, _runtime_data_type, "a DataType the portable engine runs")
        dynamic_range = tensor.get("dynamic_range")
        if dynamic_range is not None and not (
            isinstance(dynamic_range, list) and len(dynamic_range) == 2 and all(map(_is_number, dynamic_range))
            and dynamic_range[0] <= dynamic_range[1]
        ):
            raise _fail(where, f"'dynamic_range' must be null or [min, max], got {_show(dynamic_range)}")


def _check_io(header: dict[str, Any], tensors: list[Any]) -> None:
    seen_names: set[str] = set()
    for key in ("inputs", "outputs"):
        slots = header[key]
        if not _int_list(slots, 0, len(tensors) - 1, max_len=len(tensors)) or len(set(slots)) != len(slots):
            raise _fail(key, f"must be distinct tensor slots in 0..{len(tensors) - 1}, got {_show(slots)}")
        for slot in slots:
            name = tensors[slot]["name"]
            if name in seen_names:
                raise _fail(key, f"the I/O tensor name {name!r} is used twice")
            seen_names.add(name)


# Layer kind -> (its LayerType values, number of inputs or None for any, parameter checks).
_PARAMS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "shuffle": {
        "first_transpose": (lambda v: _int_list(v, 0, MAX_RANK - 1), "a permutation"),
        "second_transpose": (lambda v: _int_list(v, 0, MAX_RANK - 1), "a permutation"),
        "reshape_dims": (lambda v: v is None or _int_list(v, -1), "null or reshape dimensions"),
        "zero_is_placeholder": (lambda v: isinstance(v, bool), "true or false"),
    },
    "convolution": {
        "num_output_maps": (lambda v: _is_int(v) and v >= 1, "a positive count"),
        "kernel_shape": (lambda v: _int_list(v, 1, max_len=3) and len(v) >= 1, "1 to 3 positive sizes"),
        "stride": (lambda v: _int_list(v, 1, max_len=3), "positive sizes"),
        "dilation": (lambda v: _int_list(v, 1, max_len=3), "positive sizes"),
        "pre_padding": (lambda v: _int_list(v, 0, max_len=3), "sizes"),
        "post_padding": (lambda v: _int_list(v, 0, max_len=3), "sizes"),
        "num_groups": (lambda v: _is_int(v) and v >= 1, "a positive count"),
        "kernel_count": (lambda v: _is_int(v) and v >= 0, "a count"),
        "bias_count": (lambda v: _is_int(v) and v >= 0, "a count"),
    },
    "elementwise": {"op": (_enum_value(ElementWiseOperation), "an ElementWiseOperation")},
    "unary": {"op": (_enum_value(UnaryOperation), "a UnaryOperation")},
    "activation": {
        "activation": (_enum_value(ActivationType), "an ActivationType"),
        "alpha": (_is_number, "a finite number"),
        "beta": (_is_number, "a finite number"),
    },
    "constant": {
        "shape": (lambda v: _int_list(v, 0), "static dimensions"),
        "count": (lambda v: _is_int(v) and v >= 0, "a count"),
        "dtype": (_runtime_data_type, "a DataType the portable engine runs"),
    },
    "plugin": {
        "plugin": (lambda v: isinstance(v, str), "a plugin name"),
        "version": (lambda v: isinstance(v, str), "a plugin version"),
        "namespace": (lambda v: isinstance(v, str), "a namespace"),
        "instance": (lambda v: isinstance(v, str), "an instance name"),
        "fields": (lambda v: isinstance(v, list), "a list of [name, type, data]"),
    },
}
_LAYER_TYPES = {
    "shuffle": {LayerType.SHUFFLE.value},
    "convolution": {LayerType.CONVOLUTION.value},
    "elementwise": {LayerType.ELEMENTWISE.value},
    "unary": {LayerType.UNARY.value},
    "activation": {LayerType.ACTIVATION.value},
    "constant": {LayerType.CONSTANT.value},
    "plugin": {LayerType.PLUGIN.value, LayerType.PLUGIN_V2.value, LayerType.PLUGIN_V3.value},
}
_INPUT_COUNTS = {"shuffle": 1, "convolution": 1, "elementwise": 2, "unary": 1, "activation": 1, "constant": 0}
_PLUGIN_FIELD_TYPE = _enum_value(PluginFieldType)


def _layer_arrays(kind: str, params: dict[str, Any], where: str, counts: list[int]) -> None:
    """The layer's weights exist and hold as many values as its parameters say."""
    if kind == "convolution":
        if _array_count(params.get("kernel"), counts) != params["kernel_count"]:
            raise _fail(where, f"the kernel must be an array of kernel_count = {params['kernel_count']} values")
        bias = params.get("bias")
        if (bias is None) != (params["bias_count"] == 0) or (bias is not None and _array_count(bias, counts) != params["bias_count"]):
            raise _fail(where, f"the bias must be null or an array of bias_count = {params['bias_count']} values")
    elif kind == "constant":
        if params["count"] != math.prod(params["shape"]) or _array_count(params.get("values"), counts) != params["count"]:
            raise _fail(where, f"the values must be an array of count = volume of shape {params['shape']} values")
    elif kind == "plugin":
        for number, field in enumerate(params["fields"]):
            if not (
                isinstance(field, list) and len(field) == 3 and isinstance(field[0], str) and _PLUGIN_FIELD_TYPE(field[1])
                and (_array_count(field[2], counts) is not None or field[2] is None or isinstance(field[2], (str, int, float)))
            ):
                raise _fail(where, f"fields[{number}] must be [name, PluginFieldType, data], got {_show(field)}")


def _check_layers(header: dict[str, Any], tensors: list[Any], counts: list[int]) -> None:
    defined = set(header["inputs"])
    for index, layer in enumerate(header["layers"]):
        where = f"layers[{index}]"
        if not isinstance(layer, dict):
            raise _fail(where, f"not an object: {_show(layer)}")
        kind = _field(layer, "kind", where, lambda v: isinstance(v, str), "a layer kind")
        if kind not in _PARAMS:
            raise _fail(where, f"unknown layer kind {kind!r}")
        name = _field(layer, "name", where, lambda v: isinstance(v, str), "a string")
        where = f"layers[{index}] ({name})"
        _field(layer, "type", where, lambda v: v in _LAYER_TYPES[kind], f"the LayerType of a {kind} layer")
        if layer.get("precision") is not None and not _runtime_data_type(layer["precision"]):
            raise _fail(where, f"'precision' must be null or a DataType, got {_show(layer['precision'])}")
        inputs = _field(layer, "inputs", where, lambda v: _int_list(v, 0, max_len=len(tensors)), "a list of tensor slots")
        outputs = _field(layer, "outputs", where, lambda v: _int_list(v, 0, max_len=len(tensors)) and len(v) >= 1, "a list of tensor slots")
        for slot in (*inputs, *outputs):
            if slot >= len(tensors):
                raise _fail(where, f"tensor slot {slot} is out of range (the engine has {len(tensors)} tensors)")
        undefined = [slot for slot in inputs if slot not in defined]
        if undefined:
            raise _fail(where, f"input slot {undefined[0]} is not an engine input or an output of an earlier layer")
        expected_inputs = _INPUT_COUNTS.get(kind)
        if expected_inputs is not None and (len(inputs) != expected_inputs or len(outputs) != 1):
            raise _fail(where, f"a {kind} layer takes {expected_inputs} input(s) and gives 1 output, not {len(inputs)} and {len(outputs)}")
        for slot in outputs:
            if slot in defined:
                raise _fail(where, f"output slot {slot} is already an engine input or another layer's output")
            defined.add(slot)
        params = _field(layer, "params", where, lambda v: isinstance(v, dict), "an object")
        for key, (check, kind_text) in _PARAMS[kind].items():
            _field(params, key, f"{where} params", check, kind_text)
        _field(params, "compute_dtype", f"{where} params", _runtime_data_type, "a DataType the portable engine runs")
        _field(
            params, "output_dtypes", f"{where} params",
            lambda v: isinstance(v, list) and len(v) == len(outputs) and all(map(_runtime_data_type, v)),
            f"{len(outputs)} DataType(s)",
        )
        if kind == "convolution" and not all(len(params[key]) == len(params["kernel_shape"]) for key in ("stride", "dilation", "pre_padding", "post_padding")):
            raise _fail(where, "stride, dilation and paddings must have one entry per kernel dimension")
        _layer_arrays(kind, params, where, counts)
        if kind == "plugin":
            continue
        # The builder's own shape rules, on the shapes the header declares (-1 where dynamic).
        in_shapes = [tuple(tensors[slot]["shape"]) for slot in inputs]
        in_types = [DataType(tensors[slot]["dtype"]) for slot in inputs]
        try:
            results = INFER[kind]({**params, "name": name}, in_shapes, in_types)
        except (BuildError, ValueError, TypeError, IndexError, KeyError) as err:
            raise _fail(where, f"impossible parameters: {err}") from None
        declared = tuple(tensors[outputs[0]]["shape"])
        if tuple(results[0][0]) != declared:
            raise _fail(where, f"its parameters give output shape {list(results[0][0])}, the header declares {list(declared)}")
    missing = [slot for slot in header["outputs"] if slot not in defined or slot in header["inputs"]]
    if missing:
        raise _fail("outputs", f"tensor slot {missing[0]} is not the output of any layer")


def _check_profiles(header: dict[str, Any], tensors: list[Any]) -> None:
    profiles = header["profiles"]
    if not profiles:
        raise _fail("profiles", "the engine has no optimization profile")
    inputs = {tensors[slot]["name"]: tensors[slot]["shape"] for slot in header["inputs"]}
    for index, profile in enumerate(profiles):
        where = f"profiles[{index}]"
        if not isinstance(profile, dict) or set(profile) != set(inputs):
            raise _fail(where, f"must give min/opt/max shapes of exactly the inputs {sorted(inputs)}")
        for name, declared in inputs.items():
            shapes = profile[name]
            if not (isinstance(shapes, list) and len(shapes) == 3 and all(_int_list(s, 0) and len(s) == len(declared) for s in shapes)):
                raise _fail(f"{where}.{name}", f"must be [min, opt, max] shapes of rank {len(declared)}, got {_show(shapes)}")
            low, opt, high = shapes
            if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                raise _fail(f"{where}.{name}", f"min {low} <= opt {opt} <= max {high} does not hold")
            if any(d >= 0 and not a == c == d for a, c, d in zip(low, high, declared)):
                raise _fail(f"{where}.{name}", f"shapes {low}..{high} conflict with the static dimensions {declared}")


def _check_build(build: dict[str, Any]) -> None:
    flags, quantization = _enum_name(BuilderFlag), _enum_name(QuantizationFlag)
    _field(build, "flags", "build", lambda v: isinstance(v, list) and all(map(flags, v)), "a list of BuilderFlag names")
    _field(build, "quantization_flags", "build", lambda v: isinstance(v, list) and all(map(quantization, v)), "a list of QuantizationFlag names")
    _field(build, "tactic_sources", "build", lambda v: _is_int(v) and v >= 0, "a bit mask")
    _field(build, "profiling_verbosity", "build", _enum_name(ProfilingVerbosity), "a ProfilingVerbosity name")


_TOP_LEVEL = {
    "build": dict, "profiles": list, "inputs": list, "outputs": list, "tensors": list, "layers": list, "arrays": list,
}


def validate_header(header: Any, payload_nbytes: int) -> None:
    """Raise EngineFormatError unless ``header`` (parsed JSON) is a portable engine header whose
    arrays lie in a payload of ``payload_nbytes`` bytes."""
    if not isinstance(header, dict):
        raise EngineFormatError(f"corrupt portable engine: the header is a JSON {type(header).__name__}, not an object")
    if _depth(header) > MAX_DEPTH:
        raise EngineFormatError(f"corrupt portable engine: the header nests deeper than {MAX_DEPTH} levels")
    for key, kind in _TOP_LEVEL.items():
        _field(header, key, "header", lambda v, kind=kind: isinstance(v, kind), f"a JSON {'object' if kind is dict else 'list'}")
    counts = _check_arrays(header["arrays"], payload_nbytes)
    _check_array_references({k: v for k, v in header.items() if k != "arrays"}, counts)
    tensors = header["tensors"]
    _check_tensors(tensors)
    _check_io(header, tensors)
    _check_layers(header, tensors, counts)
    _check_profiles(header, tensors)
    _check_build(header["build"])
