"""Shape/type rules and compute steps of the built-in (non-plugin) layers.

Every rule is a function of a layer's plain parameter dict (the same dict the engine file stores),
so the network API (build time, with -1 for unknown dims) and the execution context (run time,
concrete dims) use one implementation.  Errors are raised as :class:`BuildError` with the message
TensorRT users would look for: the layer, what is wrong, and the shapes involved.

Types follow TensorRT's weakly typed networks: FLOAT and HALF tensors mix freely, and computing
layers report FLOAT outputs unless ``set_output_type`` says otherwise; the precision a layer
actually runs in is decided at build time (``builder.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from helpers.portable import ops
from helpers.portable.enums import ActivationType, DataType, ElementWiseOperation, UnaryOperation

Shape = tuple[int, ...]
Params = dict[str, Any]
Step = Callable[..., tuple[torch.Tensor, ...]]

FLOAT_TYPES = (DataType.FLOAT, DataType.HALF)

TORCH_DTYPE = {
    DataType.FLOAT: torch.float32,
    DataType.HALF: torch.float16,
    DataType.INT8: torch.int8,
    DataType.INT32: torch.int32,
    DataType.BOOL: torch.bool,
    DataType.UINT8: torch.uint8,
    DataType.INT64: torch.int64,
    DataType.BF16: torch.bfloat16,
}


class BuildError(Exception):
    """A network that TensorRT would refuse to build; the message names the layer and the cause."""


def fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def volume(shape: Sequence[int]) -> int:
    return math.prod(shape)


def is_known(shape: Sequence[int]) -> bool:
    return all(d >= 0 for d in shape)


# ----------------------------------------------------------------------------------------------
# Shuffle


def _full_permutation(perm: Sequence[int], rank: int, where: str) -> list[int]:
    """A TensorRT Permutation shorter than the rank is the identity on the remaining axes."""
    order = list(perm)
    if len(order) > rank and order[rank:] == list(range(rank, len(order))):
        order = order[:rank]  # the identity tail of TensorRT's fixed-size Permutation
    if len(order) > rank or sorted(order) != list(range(len(order))):
        raise BuildError(f"{where}: {tuple(perm)} is not a permutation of a rank-{rank} tensor")
    return order + list(range(len(order), rank))


def _reshape(shape: Shape, dims: Sequence[int], zero_is_placeholder: bool, where: str) -> Shape:
    out: list[int] = []
    infer_at = -1
    for i, d in enumerate(dims):
        if d == 0 and zero_is_placeholder:
            if i >= len(shape):
                raise BuildError(f"{where}: reshape placeholder 0 at axis {i} has no input axis {fmt_shape(shape)}")
            out.append(shape[i])
        elif d == -1:
            if infer_at >= 0:
                raise BuildError(f"{where}: reshape dimensions {fmt_shape(dims)} have more than one -1")
            infer_at = i
            out.append(-1)
        elif d < 0:
            raise BuildError(f"{where}: negative reshape dimension in {fmt_shape(dims)}")
        else:
            out.append(d)
    if infer_at >= 0:
        rest = [d for i, d in enumerate(out) if i != infer_at]
        if is_known(shape) and is_known(rest):
            known = volume(rest)
            if known == 0 or volume(shape) % known:
                raise BuildError(f"{where}: cannot reshape {fmt_shape(shape)} to {fmt_shape(dims)}")
            out[infer_at] = volume(shape) // known
    elif is_known(shape) and is_known(out) and volume(shape) != volume(out):
        raise BuildError(
            f"{where}: reshape changes the volume: input {fmt_shape(shape)}, reshape dimensions {fmt_shape(dims)}"
        )
    return tuple(out)


def infer_shuffle(p: Params, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
    where = f"IShuffleLayer {p['name']}"
    (shape,) = shapes
    first = _full_permutation(p["first_transpose"], len(shape), f"{where} first_transpose")
    shape = tuple(shape[i] for i in first)
    if p["reshape_dims"] is not None:
        shape = _reshape(shape, p["reshape_dims"], p["zero_is_placeholder"], where)
    second = _full_permutation(p["second_transpose"], len(shape), f"{where} second_transpose")
    return [(tuple(shape[i] for i in second), dtypes[0])]


def shuffle_step(p: Params) -> Step:
    first = tuple(p["first_transpose"])
    second = tuple(p["second_transpose"])
    dims = p["reshape_dims"]
    placeholder = p["zero_is_placeholder"]

    def run(x: torch.Tensor) -> tuple[torch.Tensor]:
        x = x.permute(*_full_permutation(first, x.dim(), ""))
        if dims is not None:
            x = x.reshape(_reshape(tuple(x.shape), dims, placeholder, ""))
        return (x.permute(*_full_permutation(second, x.dim(), "")),)

    return run


# ----------------------------------------------------------------------------------------------
# Convolution (1x1 only: a fully connected layer over the channel axis)


def infer_convolution(p: Params, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
    where = f"IConvolutionLayer {p['name']}"
    (shape,) = shapes
    kernel = tuple(p["kernel_shape"])
    if any(k != 1 for k in kernel):
        raise BuildError(f"{where}: the portable engine supports only 1x1 kernels, got {'x'.join(map(str, kernel))}")
    for key, neutral in (("stride", 1), ("dilation", 1), ("pre_padding", 0), ("post_padding", 0)):
        if any(v != neutral for v in p[key]):
            raise BuildError(f"{where}: the portable engine supports only {key} {neutral}, got {tuple(p[key])}")
    if p["num_groups"] != 1:
        raise BuildError(f"{where}: the portable engine supports only num_groups 1, got {p['num_groups']}")
    need = len(kernel) + 2
    if len(shape) < need:
        raise BuildError(
            f"{where}: input {fmt_shape(shape)} has rank {len(shape)}, but a {len(kernel)}-D kernel needs rank "
            f">= {need} (batch..., C, spatial...)"
        )
    # INT8 comes from INT8 plugins (their data reaches the step as float values, see int8_plan).
    if dtypes[0] not in FLOAT_TYPES + (DataType.INT8,):
        raise BuildError(f"{where}: input must be FLOAT, HALF or INT8, got {dtypes[0].name}")
    axis = len(shape) - len(kernel) - 1
    channels = shape[axis]
    if channels < 0:
        raise BuildError(f"{where}: the channel dimension (axis {axis}) of input {fmt_shape(shape)} must be static")
    outputs = p["num_output_maps"]
    if p["kernel_count"] != outputs * channels * volume(kernel):
        raise BuildError(
            f"{where}: kernel weights has count {p['kernel_count']} but {outputs * channels * volume(kernel)} was "
            f"expected (num_output_maps {outputs} x channels {channels} x kernel {'x'.join(map(str, kernel))})"
        )
    if p["bias_count"] not in (0, outputs):
        raise BuildError(f"{where}: bias weights has count {p['bias_count']} but {outputs} was expected")
    out = list(shape)
    out[axis] = outputs
    return [(tuple(out), DataType.FLOAT)]


def matmul_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """CPU GEMMs in half are slow or missing: keep half storage, compute in float32 there."""
    return torch.float32 if device.type == "cpu" and dtype == torch.float16 else dtype


def convolution_step(p: Params, weight: torch.Tensor, bias: torch.Tensor | None) -> Step:
    """``weight`` [K, C] and ``bias`` [K] already in the matmul dtype on the engine's device."""
    spatial = len(p["kernel_shape"])
    compute = TORCH_DTYPE[DataType(p["compute_dtype"])]
    out_dtype = TORCH_DTYPE[DataType(p["output_dtypes"][0])]

    def run(x: torch.Tensor) -> tuple[torch.Tensor]:
        x = x.to(compute).to(weight.dtype)
        trailing = x.shape[x.dim() - spatial :]
        if all(d == 1 for d in trailing):
            lead = x.shape[: x.dim() - spatial - 1]
            y = ops.linear(x.reshape(*lead, x.shape[-spatial - 1]), weight, bias)
            y = y.reshape(*lead, weight.shape[0], *trailing)
        else:
            y = ops.linear(x.movedim(-spatial - 1, -1), weight, bias).movedim(-1, -spatial - 1)
        return (y.to(compute).to(out_dtype),)

    return run


# ----------------------------------------------------------------------------------------------
# Element-wise and unary


def broadcast_shapes(a: Shape, b: Shape, where: str) -> Shape:
    if len(a) != len(b):
        raise BuildError(
            f"{where}: inputs must have the same rank, got {fmt_shape(a)} and {fmt_shape(b)} "
            "(TensorRT broadcasts only over dimensions of size 1)"
        )
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif x == -1 or y == -1:
            out.append(max(x, y))
        else:
            raise BuildError(f"{where}: dimensions not broadcastable: {fmt_shape(a)} and {fmt_shape(b)}")
    return tuple(out)


_ELEMENTWISE: dict[ElementWiseOperation, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    ElementWiseOperation.SUM: torch.add,
    ElementWiseOperation.PROD: torch.mul,
    ElementWiseOperation.MAX: torch.maximum,
    ElementWiseOperation.MIN: torch.minimum,
    ElementWiseOperation.SUB: torch.sub,
    ElementWiseOperation.DIV: torch.div,
    ElementWiseOperation.POW: torch.pow,
}


def infer_elementwise(p: Params, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
    where = f"IElementWiseLayer {p['name']}"
    op = ElementWiseOperation(p["op"])
    if op not in _ELEMENTWISE:
        raise BuildError(f"{where}: operation {op.name} is not supported by the portable engine")
    # An INT8 input is an INT8 plugin's output (implicit quantization): TensorRT hands a float layer
    # its dequantized value, so it mixes with float tensors.
    floats = dtypes[0] in (*FLOAT_TYPES, DataType.INT8) and dtypes[1] in (*FLOAT_TYPES, DataType.INT8)
    if not floats and dtypes[0] != dtypes[1]:
        raise BuildError(f"{where}: input types differ: {dtypes[0].name} and {dtypes[1].name}")
    if not floats and dtypes[0] != DataType.INT32:
        raise BuildError(f"{where}: {dtypes[0].name} inputs are not supported")
    return [(broadcast_shapes(shapes[0], shapes[1], where), DataType.FLOAT if floats else dtypes[0])]


def elementwise_step(p: Params) -> Step:
    fn = _ELEMENTWISE[ElementWiseOperation(p["op"])]
    compute = TORCH_DTYPE[DataType(p["compute_dtype"])]
    out_dtype = TORCH_DTYPE[DataType(p["output_dtypes"][0])]

    def run(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor]:
        return (fn(a.to(compute), b.to(compute)).to(out_dtype),)

    return run


_UNARY: dict[UnaryOperation, Callable[[torch.Tensor], torch.Tensor]] = {
    UnaryOperation.EXP: torch.exp,
    UnaryOperation.LOG: torch.log,
    UnaryOperation.SQRT: torch.sqrt,
    UnaryOperation.RECIP: torch.reciprocal,
    UnaryOperation.ABS: torch.abs,
    UnaryOperation.NEG: torch.neg,
    UnaryOperation.SIN: torch.sin,
    UnaryOperation.COS: torch.cos,
    UnaryOperation.TAN: torch.tan,
    UnaryOperation.SINH: torch.sinh,
    UnaryOperation.COSH: torch.cosh,
    UnaryOperation.ASIN: torch.asin,
    UnaryOperation.ACOS: torch.acos,
    UnaryOperation.ATAN: torch.atan,
    UnaryOperation.ASINH: torch.asinh,
    UnaryOperation.ACOSH: torch.acosh,
    UnaryOperation.ATANH: torch.atanh,
    UnaryOperation.CEIL: torch.ceil,
    UnaryOperation.FLOOR: torch.floor,
    UnaryOperation.ERF: torch.erf,
    UnaryOperation.SIGN: torch.sign,
    UnaryOperation.ROUND: torch.round,
}


def infer_unary(p: Params, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
    where = f"IUnaryLayer {p['name']}"
    op = UnaryOperation(p["op"])
    if op not in _UNARY:
        raise BuildError(f"{where}: operation {op.name} is not supported by the portable engine")
    if dtypes[0] not in FLOAT_TYPES:
        raise BuildError(f"{where}: input must be FLOAT or HALF, got {dtypes[0].name}")
    return [(shapes[0], DataType.FLOAT)]


def unary_step(p: Params) -> Step:
    fn = _UNARY[UnaryOperation(p["op"])]
    compute = TORCH_DTYPE[DataType(p["compute_dtype"])]
    out_dtype = TORCH_DTYPE[DataType(p["output_dtypes"][0])]

    def run(x: torch.Tensor) -> tuple[torch.Tensor]:
        return (fn(x.to(compute)).to(out_dtype),)

    return run


_ACTIVATIONS: dict[ActivationType, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    ActivationType.RELU: lambda x, a, b: torch.relu(x),
    ActivationType.SIGMOID: lambda x, a, b: torch.sigmoid(x),
    ActivationType.TANH: lambda x, a, b: torch.tanh(x),
    ActivationType.LEAKY_RELU: lambda x, a, b: torch.where(x >= 0, x, a * x),
    ActivationType.ELU: lambda x, a, b: torch.where(x >= 0, x, a * torch.expm1(x)),
    ActivationType.SELU: lambda x, a, b: b * torch.where(x >= 0, x, a * torch.expm1(x)),
    ActivationType.SOFTSIGN: lambda x, a, b: x / (1 + x.abs()),
    ActivationType.SOFTPLUS: lambda x, a, b: a * torch.log1p(torch.exp(b * x)),
    ActivationType.CLIP: lambda x, a, b: torch.clamp(x, a, b),
    ActivationType.HARD_SIGMOID: lambda x, a, b: torch.clamp(a * x + b, 0, 1),
    ActivationType.SCALED_TANH: lambda x, a, b: a * torch.tanh(b * x),
    ActivationType.THRESHOLDED_RELU: lambda x, a, b: torch.where(x > a, x, 0),
    ActivationType.GELU_ERF: lambda x, a, b: torch.nn.functional.gelu(x),
    ActivationType.GELU_TANH: lambda x, a, b: ops.gelu_tanh(x),
}


def infer_activation(p: Params, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
    if dtypes[0] not in FLOAT_TYPES:
        raise BuildError(f"IActivationLayer {p['name']}: input must be FLOAT or HALF, got {dtypes[0].name}")
    return [(shapes[0], DataType.FLOAT)]


def activation_step(p: Params) -> Step:
    fn = _ACTIVATIONS[ActivationType(p["activation"])]
    alpha, beta = p["alpha"], p["beta"]
    compute = TORCH_DTYPE[DataType(p["compute_dtype"])]
    out_dtype = TORCH_DTYPE[DataType(p["output_dtypes"][0])]

    def run(x: torch.Tensor) -> tuple[torch.Tensor]:
        return (fn(x.to(compute), alpha, beta).to(out_dtype),)

    return run


# ----------------------------------------------------------------------------------------------
# Constant


def infer_constant(p: Params, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
    shape = tuple(p["shape"])
    if not is_known(shape):
        raise BuildError(f"IConstantLayer {p['name']}: shape {fmt_shape(shape)} must be static")
    if volume(shape) != p["count"]:
        raise BuildError(
            f"IConstantLayer {p['name']}: weights has count {p['count']} but shape {fmt_shape(shape)} "
            f"needs {volume(shape)}"
        )
    return [(shape, DataType(p["dtype"]))]


INFER: dict[str, Callable[[Params, Sequence[Shape], Sequence[DataType]], list[tuple[Shape, DataType]]]] = {
    "shuffle": infer_shuffle,
    "convolution": infer_convolution,
    "elementwise": infer_elementwise,
    "unary": infer_unary,
    "activation": infer_activation,
    "constant": infer_constant,
}
