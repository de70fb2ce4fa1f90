"""The layer patterns of the builders' networks that the lowering passes fuse, found on a typed graph.

Both the float fast path (``kernels/plan.py``) and the 8-bit lowering (``int8_plan.py``) look for
the same patterns here, and nothing here depends on the device, so tests count the matches of a
built engine on any machine:

* a dense layer: a 1×1 convolution of one group over one input (the builders' fully connected
  layers);
* the builder's GELU right after a dense layer (``builder_utils.add_gelu``), in either form: the
  tanh approximation's eight layers ``0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))``, their
  operands in either order where the operation commutes, or the exact erf GELU's one GELU_ERF
  activation layer;
* a dense layer whose only reader is a skip-LayerNorm plugin's input (the attention output and FC2
  projections);
* the layout a QKV-to-context plugin's attention runs in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helpers.portable import ops
from helpers.portable.enums import ActivationType, DataType, ElementWiseOperation
from helpers.portable.graph import Graph, Layer
from helpers.portable.plugins import FIXED, INTERLEAVED, PACKED, QKV, SKIP_LN

# The builder's tanh GELU: (kind, op, constant operand or None, operand wiring).  Operands: "x" the
# GELU input, "prev" the previous layer's output, "c" the constant.
GELU_CHAIN = (
    ("elementwise", ElementWiseOperation.POW, 3.0, ("x", "c")),
    ("elementwise", ElementWiseOperation.PROD, 0.044715, ("prev", "c")),
    ("elementwise", ElementWiseOperation.SUM, None, ("x", "prev")),
    ("elementwise", ElementWiseOperation.PROD, ops.GELU_SQRT_2_OVER_PI, ("prev", "c")),
    ("activation", ActivationType.TANH, None, ("prev",)),
    ("elementwise", ElementWiseOperation.SUM, 1.0, ("prev", "c")),
    ("elementwise", ElementWiseOperation.PROD, 0.5, ("prev", "c")),
    ("elementwise", ElementWiseOperation.PROD, None, ("prev", "x")),
)
_COMMUTATIVE = (ElementWiseOperation.SUM, ElementWiseOperation.PROD)


def is_dense(layer: Layer) -> bool:
    """A 1×1 convolution of one group over one input: a fully connected layer over the channel axis."""
    return (layer.kind == "convolution" and all(k == 1 for k in layer.params["kernel_shape"])
            and layer.params.get("num_groups", 1) == 1 and len(layer.inputs) == 1)


def _operands_match(graph: Graph, wiring: tuple[str, ...], slots: tuple[int, ...], named: dict[str, int],
                    constant: float | None) -> bool:
    for operand, slot in zip(wiring, slots):
        if operand == "c":
            value = graph.constant_value(slot)
            if value is None or constant is None or not np.isclose(value, constant, rtol=1e-6):
                return False
        elif named[operand] != slot:
            return False
    return True


def _gelu_member(graph: Graph, step: tuple, layer: Layer, x: int, prev: int, compute: int) -> bool:
    kind, op, constant, wiring = step
    key = "op" if kind == "elementwise" else "activation"
    if layer.kind != kind or layer.params.get(key) != int(op) or layer.params["compute_dtype"] != compute:
        return False
    if kind == "activation":
        return layer.inputs == (prev,)
    named = {"x": x, "prev": prev}
    orders = [wiring, wiring[::-1]] if op in _COMMUTATIVE else [wiring]
    return any(_operands_match(graph, order, layer.inputs, named, constant) for order in orders)


def _tanh_chain(graph: Graph, following: list[Layer], x: int, compute: int) -> list[Layer] | None:
    """The eight layers of the builder's tanh GELU of ``x`` at the start of ``following``."""
    if len(following) < len(GELU_CHAIN):
        return None
    chain, prev = following[:len(GELU_CHAIN)], x
    for step, layer in zip(GELU_CHAIN, chain):
        if not _gelu_member(graph, step, layer, x, prev, compute):
            return None
        prev = layer.outputs[0]
    return chain


@dataclass(frozen=True)
class Gelu:
    """The builder's GELU right after a dense layer: its form and its layers, in order."""

    form: ops.GeluForm
    layers: tuple[Layer, ...]

    @property
    def output(self) -> int:
        """The slot of the GELU's result."""
        return self.layers[-1].outputs[0]


def gelu_after(graph: Graph, conv: Layer) -> Gelu | None:
    """The builder's GELU right after dense layer ``conv`` (the tanh chain, or one GELU_ERF
    activation reading ``conv``'s output), when a fused step may compute it with the GEMM: every
    intermediate read only inside the GELU, the GELU computing in the GEMM's type (or pinned to FP32
    after an FP16 GEMM, when only GEMMs read its result, which then arrives in the GEMM's type)."""
    x = conv.outputs[0]
    compute = conv.params["compute_dtype"]
    following = graph.following(conv)
    if not following:
        return None
    first = following[0]
    gelu_compute = first.params["compute_dtype"]
    if gelu_compute != compute and (compute, gelu_compute) != (int(DataType.HALF), int(DataType.FLOAT)):
        return None
    if (first.kind == "activation" and first.params["activation"] == int(ActivationType.GELU_ERF)
            and first.inputs == (x,)):
        gelu = Gelu("erf", (first,))
    else:
        chain = _tanh_chain(graph, following, x, gelu_compute)
        if chain is None:
            return None
        gelu = Gelu("tanh", tuple(chain))
    if gelu.layers[-1].params["output_dtypes"][0] != gelu_compute:
        return None
    inner = [x] + [layer.outputs[0] for layer in gelu.layers[:-1]]
    if not all(graph.used_only_by(slot, gelu.layers) for slot in inner):
        return None
    if gelu_compute != compute and (gelu.output in graph.outputs
                                    or any(user.kind != "convolution" for user in graph.readers.get(gelu.output, ()))):
        return None
    return gelu


def skip_layernorm_after(graph: Graph, conv: Layer) -> Layer | None:
    """The skip-LayerNorm plugin (not interleaved) whose input is ``conv``'s output and its only use."""
    out = conv.outputs[0]
    users = graph.readers.get(out, [])
    if len(users) != 1 or graph.uses(out) != 1:
        return None
    user = users[0]
    if (not user.is_plugin(SKIP_LN) or user.plugin is None or user.plugin.definition.layout == INTERLEAVED
            or user.inputs[0] != out):
        return None
    return user


def attention_layout(layer: Layer) -> str | None:
    """FIXED, PACKED or INTERLEAVED: how a QKV-to-context plugin's tokens are laid out (a packed
    version with ``var_seqlen`` 0 runs the fixed-length attention); None for other layers."""
    if not layer.is_plugin(QKV) or layer.plugin is None:
        return None
    layout = layer.plugin.definition.layout
    if layout == PACKED and not layer.plugin.params["var_seqlen"]:
        return FIXED
    return layout
