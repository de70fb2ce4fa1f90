"""``INetworkDefinition`` and its layers, as the TensorRT 10 Python API exposes them (its tensors:
``tensors.py``).

Layers keep their parameters as plain values; shapes and types are inferred on demand with the
rules of ``layers.py`` / ``plugins.py``, so changing a shuffle's ``reshape_dims`` after adding it
behaves as in TensorRT.  A layer whose inputs are already invalid logs the error when added;
``build_serialized_network`` re-checks the whole network and fails with the first error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from helpers.portable.enums import (
    ActivationType,
    DataType,
    ElementWiseOperation,
    LayerType,
    PaddingMode,
    Severity,
    UnaryOperation,
)
from helpers.portable.layers import INFER, BuildError, Params, Shape
from helpers.portable.plugin_registry import IPluginV2, IPluginV3
from helpers.portable.plugins import PLUGIN_DEFINITIONS
from helpers.portable.tensors import Dims, ITensor, Weights, as_shape, as_weights

if TYPE_CHECKING:
    from helpers.portable.builder import Builder


class ILayer:
    _kind = ""
    _type_name = ""
    _layer_type = LayerType.IDENTITY
    _registered = False
    # Attributes that cannot change any tensor's shape or type.
    _SHAPE_NEUTRAL = frozenset({"name", "metadata", "_precision", "_registered"})

    def __setattr__(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)
        if self._registered and key not in self._SHAPE_NEUTRAL:
            self._network._invalidate()

    def __init__(self, network: INetworkDefinition, inputs: Sequence[ITensor], num_outputs: int) -> None:
        self._network = network
        self._inputs = list(inputs)
        index = len(network._layers)
        self.name = f"(Unnamed Layer* {index}) [{self._type_name}]"
        suffix = ["_output"] if num_outputs == 1 else [f"_output_{i}" for i in range(num_outputs)]
        self._outputs = [ITensor(network, self.name + s, self, i) for i, s in enumerate(suffix)]
        self._precision: DataType | None = None
        self._output_types: dict[int, DataType] = {}
        self.metadata = ""

    @property
    def type(self) -> LayerType:
        return self._layer_type

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> ITensor | None:
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index: int) -> ITensor | None:
        return self._outputs[index] if 0 <= index < len(self._outputs) else None

    def set_input(self, index: int, tensor: ITensor) -> None:
        if not 0 <= index < len(self._inputs):
            raise IndexError(f"{self.name}: no input {index}")
        self._inputs[index] = tensor
        self._network._invalidate()

    @property
    def precision(self) -> DataType:
        return DataType.FLOAT if self._precision is None else self._precision

    @precision.setter
    def precision(self, value: DataType) -> None:
        self._precision = value

    @property
    def precision_is_set(self) -> bool:
        return self._precision is not None

    def reset_precision(self) -> None:
        self._precision = None

    def set_output_type(self, index: int, dtype: DataType) -> None:
        self._output_types[index] = dtype
        self._network._invalidate()

    def get_output_type(self, index: int) -> DataType:
        return self._output_types.get(index, DataType.FLOAT)

    def output_type_is_set(self, index: int) -> bool:
        return index in self._output_types

    def reset_output_type(self, index: int) -> None:
        self._output_types.pop(index, None)
        self._network._invalidate()

    def _params(self) -> Params:
        """The layer's parameters as stored in the engine (weights as numpy arrays)."""
        return {"name": self.name}

    def _infer(self, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
        return INFER[self._kind](self._params(), shapes, dtypes)


class IShuffleLayer(ILayer):
    _kind = "shuffle"
    _type_name = "Shuffle"
    _layer_type = LayerType.SHUFFLE

    def __init__(self, network: INetworkDefinition, x: ITensor) -> None:
        super().__init__(network, [x], 1)
        self._first: tuple[int, ...] = tuple(range(Dims.MAX_DIMS))
        self._second: tuple[int, ...] = tuple(range(Dims.MAX_DIMS))
        self._reshape: Shape | None = None
        self.zero_is_placeholder = True

    @property
    def first_transpose(self) -> tuple[int, ...]:
        return self._first

    @first_transpose.setter
    def first_transpose(self, value: Sequence[int]) -> None:
        self._first = tuple(int(v) for v in value)

    @property
    def second_transpose(self) -> tuple[int, ...]:
        return self._second

    @second_transpose.setter
    def second_transpose(self, value: Sequence[int]) -> None:
        self._second = tuple(int(v) for v in value)

    @property
    def reshape_dims(self) -> Dims | None:
        return None if self._reshape is None else Dims(self._reshape)

    @reshape_dims.setter
    def reshape_dims(self, value: Any) -> None:
        self._reshape = as_shape(value)

    def _params(self) -> Params:
        return {
            "name": self.name,
            "first_transpose": list(self._first),
            "second_transpose": list(self._second),
            "reshape_dims": None if self._reshape is None else list(self._reshape),
            "zero_is_placeholder": bool(self.zero_is_placeholder),
        }


class IConvolutionLayer(ILayer):
    _kind = "convolution"
    _type_name = "Convolution"
    _layer_type = LayerType.CONVOLUTION

    def __init__(
        self, network: INetworkDefinition, x: ITensor, num_output_maps: int, kernel_shape: Shape, kernel: Weights, bias: Weights
    ) -> None:
        super().__init__(network, [x], 1)
        self.num_output_maps = int(num_output_maps)
        self.kernel_size_nd = Dims(kernel_shape)
        self.kernel = kernel
        self.bias = bias
        spatial = len(kernel_shape)
        self.stride_nd = Dims([1] * spatial)
        self.dilation_nd = Dims([1] * spatial)
        self.padding_nd = Dims([0] * spatial)
        self.pre_padding = Dims([0] * spatial)
        self.post_padding = Dims([0] * spatial)
        self.num_groups = 1
        self.padding_mode = PaddingMode.EXPLICIT_ROUND_DOWN

    @property
    def kernel(self) -> np.ndarray:
        return self._kernel.numpy()

    @kernel.setter
    def kernel(self, value: Any) -> None:
        self._kernel = as_weights(value)

    @property
    def bias(self) -> np.ndarray:
        return self._bias.numpy()

    @bias.setter
    def bias(self, value: Any) -> None:
        self._bias = as_weights(value)

    def _params(self) -> Params:
        padding = [max(a, b) for a, b in zip(self.padding_nd, self.pre_padding)]
        return {
            "name": self.name,
            "num_output_maps": self.num_output_maps,
            "kernel_shape": list(self.kernel_size_nd),
            "stride": list(self.stride_nd),
            "dilation": list(self.dilation_nd),
            "pre_padding": padding,
            "post_padding": [max(a, b) for a, b in zip(self.padding_nd, self.post_padding)],
            "num_groups": int(self.num_groups),
            "kernel_count": self._kernel.size,
            "bias_count": self._bias.size,
            "kernel": self._kernel.numpy(),
            "bias": self._bias.numpy() if self._bias.size else None,
        }


class IElementWiseLayer(ILayer):
    _kind = "elementwise"
    _type_name = "ElementWise"
    _layer_type = LayerType.ELEMENTWISE

    def __init__(self, network: INetworkDefinition, a: ITensor, b: ITensor, op: ElementWiseOperation) -> None:
        super().__init__(network, [a, b], 1)
        self.op = op

    def _params(self) -> Params:
        return {"name": self.name, "op": int(self.op)}


class IUnaryLayer(ILayer):
    _kind = "unary"
    _type_name = "Unary"
    _layer_type = LayerType.UNARY

    def __init__(self, network: INetworkDefinition, x: ITensor, op: UnaryOperation) -> None:
        super().__init__(network, [x], 1)
        self.op = op

    def _params(self) -> Params:
        return {"name": self.name, "op": int(self.op)}


class IActivationLayer(ILayer):
    _kind = "activation"
    _type_name = "Activation"
    _layer_type = LayerType.ACTIVATION

    def __init__(self, network: INetworkDefinition, x: ITensor, type: ActivationType) -> None:
        super().__init__(network, [x], 1)
        self._activation = type
        self.alpha = 0.0
        self.beta = 0.0

    @property  # type: ignore[override]  # TensorRT's IActivationLayer.type is the activation
    def type(self) -> ActivationType:
        return self._activation

    @type.setter
    def type(self, value: ActivationType) -> None:
        self._activation = value

    def _params(self) -> Params:
        return {"name": self.name, "activation": int(self._activation), "alpha": float(self.alpha), "beta": float(self.beta)}


class IConstantLayer(ILayer):
    _kind = "constant"
    _type_name = "Constant"
    _layer_type = LayerType.CONSTANT

    def __init__(self, network: INetworkDefinition, shape: Shape, weights: Weights) -> None:
        super().__init__(network, [], 1)
        self.shape = Dims(shape)
        self.weights = weights

    @property
    def weights(self) -> np.ndarray:
        return self._weights.numpy()

    @weights.setter
    def weights(self, value: Any) -> None:
        self._weights = as_weights(value)

    def _params(self) -> Params:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "count": self._weights.size,
            "dtype": int(self._weights.dtype),
            "values": self._weights.numpy(),
        }


class _PluginLayer(ILayer):
    _kind = "plugin"

    def __init__(self, network: INetworkDefinition, inputs: Sequence[ITensor], plugin: IPluginV2 | IPluginV3) -> None:
        super().__init__(network, inputs, plugin.num_outputs)
        self._plugin = plugin

    def _params(self) -> Params:
        plugin = self._plugin
        return {
            "name": self.name,
            "plugin": plugin.plugin_type,
            "version": plugin.plugin_version,
            "namespace": plugin.plugin_namespace,
            "instance": plugin._name,
            "fields": [(f.name, int(f.type), f.data) for f in plugin._fields],
        }

    def _infer(self, shapes: Sequence[Shape], dtypes: Sequence[DataType]) -> list[tuple[Shape, DataType]]:
        plugin = self._plugin
        definition = PLUGIN_DEFINITIONS[(plugin.plugin_type, plugin.plugin_version)]
        return definition.infer(plugin._params, shapes, dtypes)


class IPluginV2Layer(_PluginLayer):
    _type_name = "PluginV2"
    _layer_type = LayerType.PLUGIN_V2

    @property
    def plugin(self) -> IPluginV2:
        return self._plugin  # type: ignore[return-value]


class IPluginV3Layer(_PluginLayer):
    _type_name = "PluginV3"
    _layer_type = LayerType.PLUGIN_V3

    @property
    def plugin(self) -> IPluginV3:
        return self._plugin  # type: ignore[return-value]


class INetworkDefinition:
    def __init__(self, builder: Builder, flags: int) -> None:
        self._builder = builder
        self._flags = flags
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._layers: list[ILayer] = []
        self.name = "Unnamed Network 0"
        # Shapes/types of the first _inferred_count layers' outputs, by tensor id.
        self._known: dict[int, tuple[Shape, DataType]] = {}
        self._inferred_count = 0

    def _invalidate(self) -> None:
        self._known = {}
        self._inferred_count = 0

    def _log(self, severity: Severity, msg: str) -> None:
        self._builder.logger.log(severity, msg)

    # ---- construction

    def _check_tensors(self, where: str, tensors: Iterable[Any]) -> None:
        for tensor in tensors:
            if not isinstance(tensor, ITensor) or tensor._network is not self:
                raise TypeError(f"{where}: expected an ITensor of this network, got {tensor!r}")

    def _add(self, layer: ILayer) -> ILayer:
        self._layers.append(layer)
        layer._registered = True
        try:
            self._infer_upto(layer)
        except BuildError as err:
            self._log(Severity.ERROR, str(err))
        return layer

    def add_input(self, name: str, dtype: DataType, shape: Any) -> ITensor:
        if any(t.name == name for t in self._inputs):
            raise ValueError(f"add_input: a network input named {name!r} already exists")
        tensor = ITensor(self, name, None)
        tensor._input_dtype = dtype
        tensor._input_shape = as_shape(shape)
        self._inputs.append(tensor)
        return tensor

    def mark_output(self, tensor: ITensor) -> None:
        self._check_tensors("mark_output", [tensor])
        if not tensor.is_network_output:
            self._outputs.append(tensor)

    def unmark_output(self, tensor: ITensor) -> None:
        self._outputs = [t for t in self._outputs if t is not tensor]

    def add_shuffle(self, input: ITensor) -> IShuffleLayer:
        self._check_tensors("add_shuffle", [input])
        return self._add(IShuffleLayer(self, input))  # type: ignore[return-value]

    def add_convolution_nd(
        self, input: ITensor, num_output_maps: int, kernel_shape: Any, kernel: Any, bias: Any = None
    ) -> IConvolutionLayer:
        self._check_tensors("add_convolution_nd", [input])
        layer = IConvolutionLayer(self, input, num_output_maps, as_shape(kernel_shape), as_weights(kernel), as_weights(bias))
        return self._add(layer)  # type: ignore[return-value]

    def add_elementwise(self, input1: ITensor, input2: ITensor, op: ElementWiseOperation) -> IElementWiseLayer:
        self._check_tensors("add_elementwise", [input1, input2])
        return self._add(IElementWiseLayer(self, input1, input2, op))  # type: ignore[return-value]

    def add_unary(self, input: ITensor, op: UnaryOperation) -> IUnaryLayer:
        self._check_tensors("add_unary", [input])
        return self._add(IUnaryLayer(self, input, op))  # type: ignore[return-value]

    def add_activation(self, input: ITensor, type: ActivationType) -> IActivationLayer:
        self._check_tensors("add_activation", [input])
        return self._add(IActivationLayer(self, input, type))  # type: ignore[return-value]

    def add_constant(self, shape: Any, weights: Any) -> IConstantLayer:
        return self._add(IConstantLayer(self, as_shape(shape), as_weights(weights)))  # type: ignore[return-value]

    def add_plugin_v2(self, inputs: Sequence[ITensor], plugin: IPluginV2) -> IPluginV2Layer:
        if not isinstance(plugin, IPluginV2):
            raise TypeError(f"add_plugin_v2(): plugin must be an IPluginV2, got {plugin!r}")
        self._check_tensors("add_plugin_v2", inputs)
        return self._add(IPluginV2Layer(self, inputs, plugin))  # type: ignore[return-value]

    def add_plugin_v3(self, inputs: Sequence[ITensor], shape_inputs: Sequence[ITensor], plugin: IPluginV3) -> IPluginV3Layer:
        if not isinstance(plugin, IPluginV3):
            raise TypeError(f"add_plugin_v3(): plugin must be an IPluginV3, got {plugin!r}")
        if len(shape_inputs):
            raise ValueError("add_plugin_v3(): the portable engine has no shape-input plugins")
        self._check_tensors("add_plugin_v3", inputs)
        return self._add(IPluginV3Layer(self, inputs, plugin))  # type: ignore[return-value]

    # ---- queries

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_layer(self, index: int) -> ILayer | None:
        return self._layers[index] if 0 <= index < len(self._layers) else None

    def get_input(self, index: int) -> ITensor | None:
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index: int) -> ITensor | None:
        return self._outputs[index] if 0 <= index < len(self._outputs) else None

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, index: int) -> ILayer:
        return self._layers[index]

    @property
    def flags(self) -> int:
        return self._flags

    @property
    def has_implicit_batch_dimension(self) -> bool:
        return False

    @property
    def builder(self) -> Builder:
        return self._builder

    # ---- shape inference

    def _infer_layer(self, layer: ILayer, known: dict[int, tuple[Shape, DataType]]) -> None:
        missing = [t for t in layer._inputs if id(t) not in known]
        if missing:
            raise BuildError(f"{layer.name}: input {missing[0].name} is not produced before this layer")
        results = layer._infer([known[id(t)][0] for t in layer._inputs], [known[id(t)][1] for t in layer._inputs])
        for tensor, (shape, dtype) in zip(layer._outputs, results):
            dtype = layer._output_types.get(tensor._index, dtype)
            known[id(tensor)] = (shape, tensor._explicit_dtype or dtype)

    def infer_all(self) -> dict[int, tuple[Shape, DataType]]:
        """Shape and type of every tensor (by id), computed afresh in layer order; raises BuildError."""
        known: dict[int, tuple[Shape, DataType]] = {id(t): (t._input_shape, t.dtype) for t in self._inputs}
        for layer in self._layers:
            self._infer_layer(layer, known)
        return known

    def _infer_upto(self, upto: ILayer) -> dict[int, tuple[Shape, DataType]]:
        """Like infer_all, but incremental: layers already inferred since the last change are kept."""
        known = self._known
        known.update({id(t): (t._input_shape, t.dtype) for t in self._inputs})
        if upto in self._layers[: self._inferred_count]:
            return known
        for layer in self._layers[self._inferred_count :]:
            self._infer_layer(layer, known)
            self._inferred_count += 1
            if layer is upto:
                break
        return known

    def _inferred(self, tensor: ITensor) -> tuple[Shape, DataType]:
        try:
            return self._infer_upto(tensor._producer)[id(tensor)]  # type: ignore[arg-type]
        except BuildError:
            return (), DataType.FLOAT
