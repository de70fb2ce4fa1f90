"""The network of a portable engine as typed objects, and the plan that runs it.

:func:`load_graph` turns an engine description (the engine file's header, or the builder's
in-memory one) into a :class:`Graph`: its :class:`Tensor` slots and its :class:`Layer` list in
topological order, each plugin layer's fields parsed and validated once into a :class:`Plugin`.
The passes of ``passes.py`` lower a graph into a :class:`Plan`: :class:`Step` closures over
input/output slot numbers, constants already on the device.  :func:`execute` runs a plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# Imported for its registrations: the interleaved plugin versions join PLUGIN_DEFINITIONS.
import helpers.portable.plugins_interleaved  # noqa: F401
from helpers.portable import layers
from helpers.portable.engine_file import EngineFormatError
from helpers.portable.enums import DataType, PluginFieldType
from helpers.portable.layers import Params, Shape
from helpers.portable.plugins import PLUGIN_DEFINITIONS, PluginDefinition, PluginError, PluginField, parse_plugin


@dataclass(frozen=True)
class Tensor:
    """One slot of the engine: a network input, a layer output or a constant."""

    slot: int
    name: str
    shape: Shape  # -1 where only known at run time
    dtype: DataType  # as declared in the network
    runtime_dtype: DataType  # as stored while the engine runs
    dynamic_range: tuple[float, float] | None  # INT8 range: set on the network or calibrated

    @property
    def amax(self) -> float | None:
        """The symmetric INT8 range's bound, None without a range."""
        return None if self.dynamic_range is None else max(abs(float(v)) for v in self.dynamic_range)


@dataclass(frozen=True)
class Plugin:
    """A plugin layer's definition, parameters and field values, parsed when the engine loads."""

    definition: PluginDefinition
    params: Params
    values: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.definition.name


@dataclass(frozen=True)
class Layer:
    """One layer: its kind (``shuffle``, ``convolution``, ``elementwise``, ``unary``, ``activation``,
    ``constant``, ``plugin``), the engine file's parameters, and slot numbers."""

    index: int
    name: str
    kind: str
    params: Params
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    precision: DataType | None  # the precision the network set on the layer, if any
    plugin: Plugin | None = None  # plugin layers only

    @property
    def compute_dtype(self) -> DataType:
        return DataType(self.params["compute_dtype"])

    @property
    def output_dtypes(self) -> tuple[DataType, ...]:
        return tuple(DataType(t) for t in self.params["output_dtypes"])

    def is_plugin(self, name: str) -> bool:
        return self.plugin is not None and self.plugin.name == name


@dataclass
class Graph:
    """A loaded engine's network: tensors by slot, layers in execution order, I/O slots, build flags."""

    tensors: list[Tensor]
    layers: list[Layer]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    flags: frozenset[str]
    producer: dict[int, Layer] = field(init=False)
    readers: dict[int, list[Layer]] = field(init=False)  # each layer once per slot, in layer order

    def __post_init__(self) -> None:
        self.producer = {slot: layer for layer in self.layers for slot in layer.outputs}
        self.readers = {}
        for layer in self.layers:
            for slot in dict.fromkeys(layer.inputs):
                self.readers.setdefault(slot, []).append(layer)

    def uses(self, slot: int) -> int:
        """How many layer inputs read ``slot`` (twice for a layer reading it twice), plus one if the
        engine outputs it."""
        return sum(layer.inputs.count(slot) for layer in self.readers.get(slot, ())) + self.outputs.count(slot)

    def used_only_by(self, slot: int, layers: Sequence[Layer]) -> bool:
        return self.uses(slot) == sum(layer.inputs.count(slot) for layer in layers)

    def constant_value(self, slot: int) -> float | None:
        """The value of a one-element constant, None for anything else."""
        layer = self.producer.get(slot)
        if layer is None or layer.kind != "constant":
            return None
        values = np.asarray(layer.params["values"], dtype=np.float64).ravel()
        return float(values[0]) if values.size == 1 else None

    def following(self, layer: Layer) -> list[Layer]:
        """The computing (non-constant) layers after ``layer``, in order."""
        return [later for later in self.layers[layer.index + 1:] if later.kind != "constant"]


def _plugin(params: Params) -> Plugin:
    key = (params["plugin"], params["version"])
    definition = PLUGIN_DEFINITIONS.get(key)
    if definition is None:
        raise EngineFormatError(f"the engine uses plugin {key[0]} version {key[1]}, which this build does not have")
    fields = [PluginField(name, data, PluginFieldType(tag)) for name, tag, data in params["fields"]]
    try:
        parsed, values = parse_plugin(definition, params["instance"], fields)
    except PluginError as err:
        raise EngineFormatError(f"corrupt portable engine: {err}") from None
    return Plugin(definition, parsed, values)


def load_graph(description: dict[str, Any]) -> Graph:
    """The typed graph of an engine description; raises EngineFormatError for unknown or invalid plugins."""
    tensors = [
        Tensor(slot, t["name"], tuple(t["shape"]), DataType(t["dtype"]), DataType(t["runtime_dtype"]),
               None if t["dynamic_range"] is None else (float(t["dynamic_range"][0]), float(t["dynamic_range"][1])))
        for slot, t in enumerate(description["tensors"])
    ]
    graph_layers = []
    for index, layer in enumerate(description["layers"]):
        kind = layer["kind"]
        if kind not in layers.INFER and kind != "plugin":
            raise EngineFormatError(f"corrupt portable engine: unknown layer kind {kind!r}")
        precision = layer.get("precision")
        graph_layers.append(Layer(
            index, layer["name"], kind, layer["params"], tuple(layer["inputs"]), tuple(layer["outputs"]),
            None if precision is None else DataType(precision), _plugin(layer["params"]) if kind == "plugin" else None,
        ))
    return Graph(tensors, graph_layers, tuple(description["inputs"]), tuple(description["outputs"]),
                 frozenset(description["build"].get("flags", ())))


def resolve_shapes(graph: Graph, input_shapes: dict[int, Shape]) -> dict[int, Shape]:
    """Concrete shape of every slot from the input shapes; raises BuildError on a mismatch."""
    shapes = dict(input_shapes)
    for layer in graph.layers:
        in_shapes = [shapes[s] for s in layer.inputs]
        in_types = [graph.tensors[s].dtype for s in layer.inputs]
        if layer.plugin is not None:
            results = layer.plugin.definition.infer(layer.plugin.params, in_shapes, in_types)
        else:
            results = layers.INFER[layer.kind](layer.params, in_shapes, in_types)
        for slot, (shape, _) in zip(layer.outputs, results):
            shapes[slot] = shape
    return shapes


Run = Callable[..., Sequence[torch.Tensor]]


@dataclass
class Step:
    """One call of a plan: ``run(*inputs)`` returns the values of ``outputs``.  ``pattern`` names
    the fused pattern or lowering that made it ("" for a layer's reference step)."""

    name: str
    run: Run
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    pattern: str = ""


@dataclass
class Plan:
    steps: list[Step]
    num_slots: int
    constants: dict[int, torch.Tensor] = field(default_factory=dict)

    def patterns(self) -> dict[str, int]:
        """How many steps each fused pattern or lowering made (the reference steps not counted)."""
        counts: dict[str, int] = {}
        for step in self.steps:
            if step.pattern:
                counts[step.pattern] = counts.get(step.pattern, 0) + 1
        return counts


def execute(plan: Plan, buffers: list[Any]) -> None:
    """Run every step; ``buffers`` holds the input (and constant) tensors by slot on entry."""
    for step in plan.steps:
        results = step.run(*[buffers[i] for i in step.inputs])
        for slot, value in zip(step.outputs, results):
            buffers[slot] = value
