"""A plan under construction (:class:`PlanBuilder`), the reference lowering of every layer, and the
pass that drops dead slots.

Each pass of ``passes.py`` asks the builder which layers are still to lower and places one step
for the layers it covers: the step runs where the last of them ran.  A layer is lowered by the
first pass that places a step for it, so its weights go to the device once, in the form that
step uses.  The reference lowering (:func:`lower_reference`) runs last and lowers what is left
with the plain math of ``layers.py`` and ``plugins.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from helpers.portable import layers
from helpers.portable.graph import Graph, Layer, Plan, Run, Step
from helpers.portable.layers import TORCH_DTYPE
from helpers.portable.options import EngineOptions
from helpers.portable.plugins import plugin_impl, plugin_input_types, plugin_weights

RELEASE_STEP = "release"


class PlanBuilder:
    """The steps placed so far for a graph on a device, by the layers they cover."""

    def __init__(self, graph: Graph, device: torch.device, options: EngineOptions, logger: Any = None) -> None:
        self.graph, self.device, self.options, self.logger = graph, device, options, logger
        # The fused CUDA steps (kernels/) run where the engine lives on a GPU and the switch allows.
        self.fast = device.type == "cuda" and options.fast_kernels
        self.num_slots = len(graph.tensors)
        self.constants: dict[int, torch.Tensor] = {}
        self._steps: dict[int, Step] = {}  # by the index of the layer where the step runs
        self._lowered: set[int] = set()

    def lowered(self, layer: Layer) -> bool:
        return layer.index in self._lowered

    def place(self, step: Step, covered: Sequence[Layer]) -> None:
        """Run ``step`` in place of the ``covered`` layers (none lowered yet), where the last one ran."""
        taken = [layer.name for layer in covered if self.lowered(layer)]
        if taken:
            raise ValueError(f"step {step.name!r} covers layers already lowered: {', '.join(taken)}")
        self._lowered.update(layer.index for layer in covered)
        self._steps[covered[-1].index] = step

    def new_slot(self) -> int:
        """A slot for a tensor the graph does not have (a fused step's extra output)."""
        self.num_slots += 1
        return self.num_slots - 1

    def plan(self) -> Plan:
        left = [layer.name for layer in self.graph.layers if layer.kind != "constant" and not self.lowered(layer)]
        if left:
            raise ValueError(f"no pass lowered the layer(s) {', '.join(left)}")
        return Plan([self._steps[index] for index in sorted(self._steps)], self.num_slots, self.constants)


# ----------------------------------------------------------------------------------------------
# The reference lowering


def _tensor(array: np.ndarray, dtype: torch.dtype, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).to(device=dev, dtype=dtype)


def _convolution(layer: Layer, dev: torch.device) -> Run:
    p = layer.params
    compute = TORCH_DTYPE[layer.compute_dtype]
    mm_dtype = layers.matmul_dtype(compute, dev)
    # Round to the compute precision first, so CPU FP16 emulation sees FP16 weights.
    weight = _tensor(p["kernel"], compute, dev).reshape(p["num_output_maps"], -1).to(mm_dtype)
    bias = None if p["bias"] is None else _tensor(p["bias"], compute, dev).to(mm_dtype)
    return layers.convolution_step(p, weight, bias)


def _plugin_step(layer: Layer, dev: torch.device) -> Run:
    assert layer.plugin is not None
    definition, params = layer.plugin.definition, layer.plugin.params
    weights = plugin_weights(definition, params, layer.plugin.values, dev)
    compute = plugin_impl(definition.name, definition.version)
    out_types = [TORCH_DTYPE[t] for t in layer.output_dtypes]
    cached_input_types: dict[int, list[torch.dtype | None]] = {}

    def run(*inputs: torch.Tensor) -> Sequence[torch.Tensor]:
        types = cached_input_types.get(len(inputs))
        if types is None:
            types = [None if t is None else TORCH_DTYPE[t] for t in plugin_input_types(definition.name, params, len(inputs))]
            cached_input_types[len(inputs)] = types
        cast = [x if t is None else x.to(t) for x, t in zip(inputs, types)]
        return [y.to(t) for y, t in zip(compute(params, weights, *cast), out_types)]

    return run


_BUILT_IN: dict[str, Callable[[Layer, torch.device], Run]] = {
    "shuffle": lambda layer, dev: layers.shuffle_step(layer.params),
    "convolution": _convolution,
    "elementwise": lambda layer, dev: layers.elementwise_step(layer.params),
    "unary": lambda layer, dev: layers.unary_step(layer.params),
    "activation": lambda layer, dev: layers.activation_step(layer.params),
    "plugin": _plugin_step,
}


def lower_reference(builder: PlanBuilder) -> None:
    """Every layer no earlier pass lowered, as its reference step; the constants onto the device."""
    graph, dev = builder.graph, builder.device
    for layer in graph.layers:
        if layer.kind == "constant":
            out = layer.outputs[0]
            dtype = TORCH_DTYPE[graph.tensors[out].runtime_dtype]
            builder.constants[out] = _tensor(layer.params["values"], dtype, dev).reshape(layer.params["shape"])
        elif not builder.lowered(layer):
            lower = _BUILT_IN[layer.kind]  # load_graph refused unknown kinds
            builder.place(Step(layer.name, lower(layer, dev), layer.inputs, layer.outputs), [layer])


def _release(count: int) -> Callable[[], tuple[None, ...]]:
    nothing = (None,) * count
    return lambda: nothing


def with_releases(plan: Plan, keep: Sequence[int]) -> Plan:
    """The plan with, after each step, a step that drops the slots no later step reads (the
    executor keeps every slot of a run otherwise: all of a model's activations at once)."""
    last_use: dict[int, int] = {}
    for i, step in enumerate(plan.steps):
        for slot in (*step.inputs, *step.outputs):
            last_use[slot] = i
    dead_after: dict[int, list[int]] = {}
    for slot, i in last_use.items():
        if slot not in keep:
            dead_after.setdefault(i, []).append(slot)
    steps = []
    for i, step in enumerate(plan.steps):
        steps.append(step)
        if i in dead_after:
            dead = tuple(sorted(dead_after[i]))
            steps.append(Step(RELEASE_STEP, _release(len(dead)), (), dead))
    return Plan(steps, plan.num_slots, plan.constants)
