"""The float fast path: the pass that lowers what it recognises onto fused CUDA steps.

:func:`find_matches` finds, on the typed graph and independently of the device, the layers each
fused step replaces (:class:`Match`; ``patterns.py`` holds the shapes they take); :func:`lower_fused`
places those steps on a CUDA engine (``kernels/steps.py``), each with its weights converted once.

* ``dense_gelu``: a dense layer + the builder's GELU (the 8-layer tanh chain, or one GELU_ERF
  layer) → one GEMM whose epilogue adds the bias and applies the GELU of that form.  The varseqlen
  network's tanh GELU, pinned to FP32 after an FP16 GEMM, fuses too when only GEMMs read its result
  (the epilogue computes in float registers).  cuBLASLt's GELU epilogue is the tanh form: the erf
  GELU after a cuBLASLt (or sparse) GEMM is its bias epilogue, then one in-place Triton GELU pass.
* ``dense_skip_layernorm``: a dense layer → skip-LayerNorm plugin → a bias-free GEMM, then one
  Triton pass adding both biases and the residual, and normalising.
* ``dense``: other dense layers (the QKV projection, the SQuAD head) → one GEMM with the bias
  epilogue.  FP16 GEMMs run on cuBLASLt with each shape's algorithm tuned (``cublaslt``), or at
  batch-1 token counts on the Triton ``few_rows_gemm`` under programmatic dependent launch
  (``pdl``), the products before a skip-LayerNorm as split-K partials that it sums.  Under
  ``SPARSE_WEIGHTS``, FP16 weights that are 2:4-structured run on PyTorch's semi-structured
  sparse GEMMs (``helpers.sparsity``), and the engine's logger says which layers did.
* ``embedding``: the fixed-length embedding plugin → one Triton gather + LayerNorm reading the
  transposed id views in place, plus one pass making the mask index and the additive key bias
  that every attention layer then shares (in a slot the graph does not have).
* ``embedding_varlen``: the packed embedding plugins → the same gather + LayerNorm, positions
  computed on the device from ``cu_seqlens`` (Megatron's second output: the pre-LN sum).
* ``attention`` (``attention_from_mask`` without the shared bias): fixed-length QKV-to-context →
  SDPA (cuDNN) or ``attention_small`` on strided views of the packed QKV tensor.
* ``attention_varlen``: packed QKV-to-context with ``var_seqlen`` → FlashAttention's varlen kernel
  (FP32: the memory-efficient kernel), the longest length being the host-known length of the
  ``max_seqlen`` input.  Tokens past ``cu_seqlens[-1]`` belong to no sequence: their context is
  left unspecified, as TensorRT's is.
* ``skip_layernorm``: other skip-LayerNorm plugins (not interleaved, not INT8) → the Triton pass.

Layers an earlier pass lowered (the INT8 lowering) are left to it.  The engine's ``EngineOptions``
turns the whole pass off (``fast_kernels``) or picks the GEMMs and launches (``cublaslt``,
``few_rows_gemm``, ``pdl``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from helpers.portable import ops
from helpers.portable.enums import DataType, Severity
from helpers.portable.graph import Graph, Layer, Step
from helpers.portable.kernels.patterns import attention_layout, gelu_after, is_dense, skip_layernorm_after
from helpers.portable.layers import TORCH_DTYPE
from helpers.portable.lowering import PlanBuilder
from helpers.portable.plugins import EMB_LN, FIXED, INTERLEAVED, PACKED, SKIP_LN, compute_type

FAST_DTYPES = (DataType.FLOAT, DataType.HALF)


@dataclass(frozen=True)
class Match:
    """A fused step to be: its pattern and the layers it covers (it runs where the last one ran);
    a ``dense_gelu`` step's GELU form."""

    pattern: str
    layers: tuple[Layer, ...]
    gelu_form: ops.GeluForm = "tanh"


def _trailing_ones(graph: Graph, slot: int, count: int) -> bool:
    return all(d == 1 for d in graph.tensors[slot].shape[-count:])


def _fast_dense(graph: Graph, conv: Layer) -> bool:
    """A dense layer the fast GEMMs take: float compute, output in the compute type, trailing ones."""
    compute = conv.compute_dtype
    return (is_dense(conv) and compute in FAST_DTYPES and conv.output_dtypes[0] == compute
            and _trailing_ones(graph, conv.inputs[0], len(conv.params["kernel_shape"])))


def _match_dense(graph: Graph, conv: Layer) -> Match | None:
    if not _fast_dense(graph, conv):
        return None
    gelu = gelu_after(graph, conv)
    if gelu is not None and conv.params["bias"] is not None:
        return Match("dense_gelu", (conv, *gelu.layers), gelu.form)
    skip_ln = skip_layernorm_after(graph, conv)
    if skip_ln is not None and skip_ln.plugin is not None:
        type_id = skip_ln.plugin.params["type_id"]
        if (type_id != int(DataType.INT8) and compute_type(type_id) == conv.compute_dtype
                and skip_ln.output_dtypes[0] == compute_type(type_id)):
            return Match("dense_skip_layernorm", (conv, skip_ln))
    return Match("dense", (conv,))


def _match_attention(layer: Layer, key_bias: dict[int, DataType]) -> Match | None:
    assert layer.plugin is not None
    params = layer.plugin.params
    type_id = params["type_id"]
    if type_id == int(DataType.INT8) or layer.output_dtypes[0] != DataType(type_id):
        return None
    if attention_layout(layer) == PACKED:
        # The fused varlen kernels take head sizes that are multiples of 8, up to 256.
        head_size = params["hidden_size"] // params["num_heads"]
        return None if head_size % 8 or head_size > 256 else Match("attention_varlen", (layer,))
    if params["has_mask"] and key_bias.get(layer.inputs[1]) != DataType(type_id):
        return Match("attention_from_mask", (layer,))
    return Match("attention", (layer,))


def _match_plugin(layer: Layer, key_bias: dict[int, DataType]) -> Match | None:
    plugin = layer.plugin
    assert plugin is not None
    if attention_layout(layer) in (FIXED, PACKED):
        return _match_attention(layer, key_bias)
    if plugin.name == EMB_LN:
        if layer.output_dtypes[0] != DataType(plugin.params["output_type"]):
            return None
        return Match("embedding" if plugin.definition.layout == FIXED else "embedding_varlen", (layer,))
    if plugin.name == SKIP_LN and plugin.definition.layout != INTERLEAVED:
        return None if plugin.params["type_id"] == int(DataType.INT8) else Match("skip_layernorm", (layer,))
    return None


def find_matches(graph: Graph, lowered: Callable[[Layer], bool] = lambda layer: False) -> list[Match]:
    """The fused steps for ``graph``, in layer order, leaving out any that would cover a layer
    ``lowered`` says an earlier pass took (that layer keeps the earlier pass's step)."""
    matches: list[Match] = []
    consumed: set[int] = set()
    key_bias: dict[int, DataType] = {}  # mask-index slot → type of the key bias its embedding step makes
    for layer in graph.layers:
        if layer.kind == "constant" or layer.index in consumed:
            continue
        if layer.kind == "convolution":
            match = _match_dense(graph, layer)
        elif layer.plugin is not None:
            match = _match_plugin(layer, key_bias)
        else:
            match = None
        if match is None or any(lowered(covered) for covered in match.layers):
            continue
        consumed.update(covered.index for covered in match.layers)
        matches.append(match)
        if match.pattern == "embedding":
            assert layer.plugin is not None
            # The attention layers read the bias in their compute dtype, the MHA type of this plugin.
            key_bias[layer.outputs[1]] = compute_type(layer.plugin.params["mha_type_id"])
    return matches


class FusedLowering:
    """Builds the steps of the matches on the builder's device, weights converted once each."""

    def __init__(self, builder: PlanBuilder, steps: ModuleType) -> None:
        self.builder, self.graph, self.dev, self.steps = builder, builder.graph, builder.device, steps
        self.options = builder.options
        self.sparse = builder.options.precision.sparse
        self.key_bias_slot: dict[int, int] = {}  # mask-index slot → the key bias slot
        self.sparse_layers: list[str] = []
        self.dense_layers: list[str] = []  # fast dense layers that stay dense under SPARSE_WEIGHTS

    def tensor(self, values: Any, dtype: torch.dtype) -> torch.Tensor:
        """A float32 weight array as a contiguous 1-D tensor of ``dtype`` on the device."""
        return torch.from_numpy(np.array(values, dtype=np.float32).ravel()).to(self.dev, dtype)

    def semi_structured(self, layer: Layer, weight: torch.Tensor) -> torch.Tensor | None:
        """The sparse form of a dense layer's weight under SPARSE_WEIGHTS, None where it stays dense."""
        if not self.sparse:
            return None
        sparse = self.steps.sparse_weight(weight) if weight.dtype == torch.float16 else None
        (self.dense_layers if sparse is None else self.sparse_layers).append(layer.name)
        return sparse

    def log_sparsity(self, logger: Any) -> None:
        total = len(self.sparse_layers) + len(self.dense_layers)
        logger.log(Severity.INFO, f"portable engine: SPARSE_WEIGHTS: {len(self.sparse_layers)} of {total} dense "
                                  "layers run on 2:4 semi-structured sparse GEMMs (FP16 weights that are 2:4)")
        for name in self.sparse_layers:
            logger.log(Severity.INFO, f"portable engine: sparse GEMM: {name}")
        for name in self.dense_layers:
            logger.log(Severity.VERBOSE, f"portable engine: dense GEMM (weight not 2:4, or not FP16): {name}")

    def gemm(self, conv: Layer) -> tuple[Any, torch.Tensor | None]:
        """The layer's GEMM (``steps.Gemm``) and its bias, in the compute dtype."""
        p = conv.params
        dt = TORCH_DTYPE[conv.compute_dtype]
        weight = self.tensor(p["kernel"], dt).reshape(p["num_output_maps"], -1)
        bias = None if p["bias"] is None else self.tensor(p["bias"], dt)
        gemm = self.steps.Gemm(weight, self.semi_structured(conv, weight), cublaslt=self.options.cublaslt,
                                      few_rows=self.options.few_rows_gemm, pdl=self.options.pdl)
        return gemm, bias

    def layernorm(self, layer: Layer) -> tuple[torch.Tensor, torch.Tensor, float]:
        assert layer.plugin is not None
        params, values = layer.plugin.params, layer.plugin.values
        gamma, beta = self.tensor(values["gamma"], torch.float32), self.tensor(values["beta"], torch.float32)
        eps = ops.skip_layernorm_eps(params["hidden_size"], TORCH_DTYPE[compute_type(params["type_id"])])
        return gamma, beta, eps

    def embedding_tables(self, layer: Layer) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """([word, token type, position] tables in the output type, gamma, beta)."""
        assert layer.plugin is not None
        params, values = layer.plugin.params, layer.plugin.values
        dt = TORCH_DTYPE[DataType(params["output_type"])]
        hidden = params["hidden_size"]
        tables = [self.tensor(values[f"bert_embeddings_{k}_embeddings"], dt).reshape(-1, hidden)
                  for k in ("word", "token_type", "position")]
        gamma, beta = (self.tensor(values[f"bert_embeddings_layernorm_{k}"], torch.float32) for k in ("gamma", "beta"))
        return tables, gamma, beta

    def step(self, match: Match) -> Step:
        """The fused step of ``match``."""
        first, last = match.layers[0], match.layers[-1]
        pdl = self.options.pdl
        kind = match.pattern
        inputs, outputs = first.inputs, last.outputs
        if kind in ("dense", "dense_gelu", "dense_skip_layernorm"):
            gemm, bias = self.gemm(first)
            spatial = len(first.params["kernel_shape"])
            if kind == "dense_skip_layernorm":
                assert last.plugin is not None
                total = np.array(first.params["bias"] if first.params["bias"] is not None else 0.0, dtype=np.float32)
                total = total + np.array(last.plugin.values.get("bias", 0.0), dtype=np.float32).ravel()
                total = np.broadcast_to(total, (last.plugin.params["hidden_size"],))
                run = self.steps.dense_skip_layernorm_step(gemm, self.tensor(total, torch.float32),
                                                                   *self.layernorm(last), pdl)
                inputs = (first.inputs[0], last.inputs[1])
            else:
                run = self.steps.dense_step(gemm, bias, spatial, gelu=kind == "dense_gelu", form=match.gelu_form)
        elif kind == "skip_layernorm":
            assert first.plugin is not None
            values = first.plugin.values
            bias = self.tensor(values["bias"], torch.float32) if "bias" in values else None
            compute = TORCH_DTYPE[compute_type(first.plugin.params["type_id"])]
            run = self.steps.skip_layernorm_step(compute, bias, *self.layernorm(first), pdl)
        elif kind == "embedding":
            assert first.plugin is not None
            tables, gamma, beta = self.embedding_tables(first)
            bias_slot = self.builder.new_slot()
            self.key_bias_slot[first.outputs[1]] = bias_slot
            mha = TORCH_DTYPE[compute_type(first.plugin.params["mha_type_id"])]
            run = self.steps.embedding_step(tables, gamma, beta, tables[0].dtype, mha, pdl)
            outputs = (*first.outputs, bias_slot)
        elif kind == "embedding_varlen":
            assert first.plugin is not None
            tables, gamma, beta = self.embedding_tables(first)
            run = self.steps.embedding_varlen_step(tables, gamma, beta, first.plugin.definition.megatron, pdl)
        else:
            assert first.plugin is not None
            params = first.plugin.params
            heads, dtype = params["num_heads"], TORCH_DTYPE[DataType(params["type_id"])]
            if kind == "attention_varlen":
                run = self.steps.attention_varlen_step(heads, dtype)
                inputs = (first.inputs[0], first.inputs[2], first.inputs[3])
            elif kind == "attention_from_mask":
                run = self.steps.attention_from_mask_step(heads, dtype, pdl)
            else:
                run = self.steps.attention_step(heads, dtype, pdl)
                inputs = (first.inputs[0],) if not params["has_mask"] else (first.inputs[0], self.key_bias_slot[first.inputs[1]])
        return Step(f"fast:{last.name}", run, inputs, outputs, pattern=kind)


def lower_fused(builder: PlanBuilder) -> None:
    """Place the fused step of every match on a CUDA engine whose options allow the fast path."""
    if not builder.fast:
        return
    # The steps' kernels need Triton, an optional dependency: imported only where the fast path runs.
    from helpers.portable.kernels import steps

    lowering = FusedLowering(builder, steps)
    for match in find_matches(builder.graph, builder.lowered):
        builder.place(lowering.step(match), match.layers)
    if lowering.sparse and builder.logger is not None:
        lowering.log_sparsity(builder.logger)
