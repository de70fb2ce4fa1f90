"""The portable engine's CUDA fast path: one rewrite of a plan, applied when the plan is built.

``optimize_plan`` walks the engine description next to the reference plan and replaces what it
recognises by fused steps over the fast kernels; everything else keeps its reference step.

* 1×1 convolution + the builder's 8-layer tanh GELU chain → one GEMM whose cuBLASLt epilogue adds
  the bias and applies the GELU.
* 1×1 convolution → skip-LayerNorm plugin → a bias-free GEMM, then one Triton pass adding the
  convolution bias (and the plugin's), the residual, and normalising.
* Other 1×1 convolutions (the QKV projection, the SQuAD head) → one GEMM with the bias epilogue.
* Dense FP16 GEMMs (all of the above) run on cuBLASLt with each shape's algorithm chosen by timing
  the heuristic's candidates against PyTorch's call (``kernels.cublaslt``; ``DEMOBERT_CUBLASLT=0``
  keeps PyTorch's calls, as do FP32 GEMMs) -- except at few rows (≤ ``pdl.CHAIN_MAX_ROWS`` tokens,
  batch 1), where they run on the Triton ``few_rows_gemm`` under programmatic dependent launch
  (``kernels.pdl``), the products before a skip-LayerNorm as split-K partials that the LayerNorm
  sums (``_Gemm``; ``DEMOBERT_FEW_ROWS_GEMM=0`` keeps cuBLASLt there).
* Fixed-length embedding plugin → one Triton gather + LayerNorm reading the transposed id views in
  place, plus one Triton pass turning the mask into the mask index and the additive key bias that
  every attention layer then shares (a plan slot added for it).
* Fixed-length QKV-to-context plugin → SDPA (cuDNN) on strided views of the packed QKV tensor.
* Packed (variable-length) embedding plugins v2–v5 → the same Triton gather + LayerNorm, with the
  positions computed on the device from ``cu_seqlens`` (Megatron's second output is the pre-LN sum).
* Packed QKV-to-context plugins v2/v5 (``var_seqlen=1``) → FlashAttention's varlen kernel on
  strided views of the [T, 3E] tensor (FP32: the memory-efficient kernel's varlen mode), with the
  longest length taken from the host-known shape of the ``max_seqlen`` input.  Tokens past
  ``cu_seqlens[-1]`` belong to no sequence: their context is left unspecified, as TensorRT's is.
* The varseqlen network's GELU chain pinned to FP32 after an FP16 GEMM is fused like an FP16 one
  (the epilogue computes the GELU in float registers) when only GEMMs read its result.
* Other skip-LayerNorm plugins → the Triton pass.
* Engines built with ``SPARSE_WEIGHTS``: the fast GEMMs of FP16 dense layers whose [out, in] weight
  is 2:4-structured run on PyTorch's semi-structured sparse kernels (``helpers.sparsity``); other
  layers stay dense.  The engine's logger says which layers went sparse.  These kernels can be
  slower than the dense ones (docs/PERF.md: on the H100 ``-sp`` costs speed).

Steps an earlier pass already replaced (INT8 lowering renames them) are left alone.  Weights are
converted once to the compute dtype on the device.  Steps only make views and launch
kernels: no host synchronisation, so a CUDA graph captures ``execute_async_v3`` whole.  Slots are
dropped after their last use, so a run holds about one layer's activations, not all of them.  The
environment variable ``DEMOBERT_FAST_KERNELS=0`` keeps the reference plan (for comparisons).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from helpers.portable import ops
from helpers.portable.enums import ActivationType, DataType, ElementWiseOperation, Severity
from helpers.portable.kernels import cublaslt
from helpers.portable.kernels.attention import attention_fixed_biased, attention_varlen, key_padding_bias
from helpers.portable.kernels.pdl import CHAIN_MAX_ROWS
from helpers.portable.layers import TORCH_DTYPE
from helpers.portable.plugins import EMB_LN, QKV, SKIP_LN, compute_type

FAST_KERNELS_ENV = "DEMOBERT_FAST_KERNELS"
FEW_ROWS_ENV = "DEMOBERT_FEW_ROWS_GEMM"
RELEASE_STEP = "release"
FAST_DTYPES = (DataType.FLOAT, DataType.HALF)
SPARSE_FLAG = "SPARSE_WEIGHTS"
FIXED_SKIP_LN_VERSIONS = ("1", "5", "2", "6")  # [.., E, 1, 1] layouts; v3/v4/v7/v8 are interleaved
VARLEN_EMB_LN_VERSIONS = {"2": False, "4": False, "3": True, "5": True}  # version -> Megatron
# The builder's GELU (builder_utils.add_gelu): (kind, op, constant operand or None, operand wiring).
# Operands: "x" the GELU input, "prev" the previous layer's output, "c" the constant.
_GELU_CHAIN = (
    ("elementwise", ElementWiseOperation.POW, 3.0, ("x", "c")),
    ("elementwise", ElementWiseOperation.PROD, 0.044715, ("prev", "c")),
    ("elementwise", ElementWiseOperation.SUM, None, ("x", "prev")),
    ("elementwise", ElementWiseOperation.PROD, ops.GELU_SQRT_2_OVER_PI, ("prev", "c")),
    ("activation", ActivationType.TANH, None, ("prev",)),
    ("elementwise", ElementWiseOperation.SUM, 1.0, ("prev", "c")),
    ("elementwise", ElementWiseOperation.PROD, 0.5, ("prev", "c")),
    ("elementwise", ElementWiseOperation.PROD, None, ("prev", "x")),
)


def fast_kernels_enabled(dev: torch.device) -> bool:
    return dev.type == "cuda" and os.environ.get(FAST_KERNELS_ENV, "1") != "0"


def optimize_plan(plan: Any, description: dict[str, Any], dev: torch.device, logger: Any = None) -> Any:
    """The plan with the fast steps in place of the patterns above (unchanged off CUDA).

    ``logger`` (an ``ILogger``) hears which dense layers run on sparse GEMMs under SPARSE_WEIGHTS.
    """
    if not fast_kernels_enabled(dev):
        return plan
    rewriter = _Rewriter(plan, description, dev)
    fast = rewriter.rewrite()
    if rewriter.sparse and logger is not None:
        rewriter.log_sparsity(logger)
    return fast


@dataclass
class _Layer:
    index: int
    name: str
    kind: str
    params: dict[str, Any]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


class _Rewriter:
    def __init__(self, plan: Any, description: dict[str, Any], dev: torch.device) -> None:
        self.plan, self.dev = plan, dev
        self.tensors = description["tensors"]
        self.layers = [_Layer(i, l["name"], l["kind"], l["params"], tuple(l["inputs"]), tuple(l["outputs"]))
                       for i, l in enumerate(description["layers"])]
        # The reference plan has one step per non-constant layer, in layer order.
        runnable = [layer.index for layer in self.layers if layer.kind != "constant"]
        self.reference_steps = dict(zip(runnable, plan.steps))
        self.producer = {slot: layer for layer in self.layers for slot in layer.outputs}
        self.uses: dict[int, int] = {}
        for layer in self.layers:
            for slot in layer.inputs:
                self.uses[slot] = self.uses.get(slot, 0) + 1
        self.engine_outputs = tuple(description["outputs"])
        for slot in self.engine_outputs:
            self.uses[slot] = self.uses.get(slot, 0) + 1
        self.key_bias_slot: dict[int, int] = {}  # mask-index slot -> additive key bias slot
        self.key_bias_dtype: dict[int, torch.dtype] = {}
        self.num_slots = plan.num_slots
        self.sparse = SPARSE_FLAG in description.get("build", {}).get("flags", ())
        self.sparse_layers: list[str] = []
        self.dense_layers: list[str] = []  # fast dense layers that stay dense under SPARSE_WEIGHTS

    # ---- helpers

    def untouched(self, layer: _Layer) -> bool:
        """Still the reference step: an earlier pass (INT8 lowering) renames the steps it replaces."""
        return self.reference_steps[layer.index].name == layer.name

    def used_only_by(self, slot: int, layers: Sequence[_Layer]) -> bool:
        return self.uses.get(slot, 0) == sum(layer.inputs.count(slot) for layer in layers)

    def constant_value(self, slot: int) -> float | None:
        layer = self.producer.get(slot)
        if layer is None or layer.kind != "constant":
            return None
        values = np.asarray(layer.params["values"], dtype=np.float64).ravel()
        return float(values[0]) if values.size == 1 else None

    def trailing_ones(self, slot: int, count: int) -> bool:
        return all(d == 1 for d in self.tensors[slot]["shape"][-count:])

    def users(self, slot: int) -> list[_Layer]:
        return [layer for layer in self.layers if slot in layer.inputs]

    def semi_structured(self, layer: _Layer, weight: torch.Tensor) -> torch.Tensor | None:
        """The sparse form of a dense layer's weight under SPARSE_WEIGHTS, None where it stays dense."""
        if not self.sparse:
            return None
        from helpers.sparsity import to_semi_structured

        sparse = to_semi_structured(weight) if weight.dtype == torch.float16 else None
        (self.dense_layers if sparse is None else self.sparse_layers).append(layer.name)
        if sparse is not None and hasattr(sparse, "fuse_transpose_cusparselt"):
            # cuSPARSELt then writes x @ Wᵀ row-major itself: no transposed result to copy (2.1× faster
            # for the BERT-large QKV GEMM at 7318 tokens on the H100).
            sparse.fuse_transpose_cusparselt = True
        return sparse

    def log_sparsity(self, logger: Any) -> None:
        total = len(self.sparse_layers) + len(self.dense_layers)
        logger.log(Severity.INFO, f"portable engine: SPARSE_WEIGHTS: {len(self.sparse_layers)} of {total} dense "
                                  "layers run on 2:4 semi-structured sparse GEMMs (FP16 weights that are 2:4)")
        for name in self.sparse_layers:
            logger.log(Severity.INFO, f"portable engine: sparse GEMM: {name}")
        for name in self.dense_layers:
            logger.log(Severity.VERBOSE, f"portable engine: dense GEMM (weight not 2:4, or not FP16): {name}")

    def dense(self, layer: _Layer) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """A 1×1 convolution's ([out, in] weight, bias) in its compute dtype, or None if not one."""
        p = layer.params
        compute = DataType(p["compute_dtype"])
        spatial = len(p["kernel_shape"])
        if (compute not in FAST_DTYPES or any(k != 1 for k in p["kernel_shape"]) or p.get("num_groups", 1) != 1
                or DataType(p["output_dtypes"][0]) != compute
                or not self.trailing_ones(layer.inputs[0], spatial) or len(layer.inputs) != 1):
            return None
        dt = TORCH_DTYPE[compute]
        weight = self.tensor(p["kernel"], dt).reshape(p["num_output_maps"], -1)
        return weight, None if p["bias"] is None else self.tensor(p["bias"], dt)

    def tensor(self, values: Any, dtype: torch.dtype) -> torch.Tensor:
        """A float32 weight array as a contiguous 1-D tensor of ``dtype`` on the device."""
        return torch.from_numpy(np.array(values, dtype=np.float32).ravel()).to(self.dev, dtype)

    def plugin_weights(self, layer: _Layer) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        from helpers.portable.runtime import _LoadedPlugin

        loaded = _LoadedPlugin(layer.params)
        return loaded.params, loaded.values

    # ---- the pass

    def rewrite(self) -> Any:
        from helpers.portable.runtime import Plan, Step

        steps: list[Any] = []
        consumed: set[int] = set()
        pending: dict[int, Any] = {}  # layer index -> fused step to place there
        for layer in self.layers:
            if layer.kind == "constant" or layer.index in consumed:
                if layer.index in pending:
                    steps.append(pending.pop(layer.index))
                continue
            fused = self.match(layer)
            if fused is None or not all(self.untouched(l) for l in fused[3]):
                steps.append(self.reference_steps[layer.index])
                continue
            run, inputs, outputs, covered = fused
            consumed.update(l.index for l in covered)
            step = Step(f"fast:{covered[-1].name}", run, inputs, outputs)
            last = covered[-1].index
            if last == layer.index:
                steps.append(step)
            else:
                pending[last] = step
        keep = set(self.engine_outputs)
        return Plan(steps=_with_releases(steps, keep, Step), num_slots=self.num_slots, constants=self.plan.constants)

    def match(self, layer: _Layer):
        if layer.kind == "convolution":
            return self.match_dense(layer)
        if layer.kind == "plugin":
            return self.match_plugin(layer)
        return None

    def match_dense(self, conv: _Layer):
        dense = self.dense(conv)
        if dense is None:
            return None
        weight, bias = dense
        spatial = len(conv.params["kernel_shape"])
        gemm = _Gemm(weight, self.semi_structured(conv, weight))
        chain = self.gelu_chain(conv)
        if chain is not None and bias is not None:
            return _dense_gelu(gemm, bias, spatial), conv.inputs, chain[-1].outputs, [conv, *chain]
        skip_ln = self.skip_ln_after(conv)
        if skip_ln is not None:
            fused = self.fused_dense_skip_ln(conv, gemm, bias, skip_ln)
            if fused is not None:
                return fused
        return _dense(gemm, bias, spatial), conv.inputs, conv.outputs, [conv]

    def gelu_chain(self, conv: _Layer) -> list[_Layer] | None:
        x = conv.outputs[0]
        compute = conv.params["compute_dtype"]
        following = [l for l in self.layers[conv.index + 1:] if l.kind != "constant"]
        if not following:
            return None
        # The chain computes in the GEMM's type, or is pinned to FP32 after an FP16 GEMM.
        chain_compute = following[0].params.get("compute_dtype")
        if chain_compute != compute and (compute, chain_compute) != (int(DataType.HALF), int(DataType.FLOAT)):
            return None
        chain: list[_Layer] = []
        prev = x
        for (kind, op, constant, wiring), layer in zip(_GELU_CHAIN, following):
            key = "op" if kind == "elementwise" else "activation"
            if layer.kind != kind or layer.params.get(key) != int(op) or layer.params["compute_dtype"] != chain_compute:
                return None
            if kind == "activation" and (layer.inputs != (prev,)):
                return None
            if kind == "elementwise":
                named = {"x": x, "prev": prev}
                for operand, slot in zip(wiring, layer.inputs):
                    if operand == "c":
                        value = self.constant_value(slot)
                        if value is None or constant is None or not np.isclose(value, constant, rtol=1e-6):
                            return None
                    elif named[operand] != slot:
                        return None
            chain.append(layer)
            prev = layer.outputs[0]
        if len(chain) != len(_GELU_CHAIN) or chain[-1].params["output_dtypes"][0] != chain_compute:
            return None
        inner = [x] + [l.outputs[0] for l in chain[:-1]]
        if not all(self.used_only_by(slot, chain) for slot in inner):
            return None
        result = chain[-1].outputs[0]
        # The fused step writes the GEMM's type; only GEMMs (which cast their input) may read it then.
        if chain_compute != compute and (result in self.engine_outputs
                                         or any(user.kind != "convolution" for user in self.users(result))):
            return None
        return chain

    def skip_ln_after(self, conv: _Layer) -> _Layer | None:
        out = conv.outputs[0]
        users = [l for l in self.layers if out in l.inputs]
        if len(users) != 1 or self.uses.get(out) != 1:
            return None
        user = users[0]
        if (user.kind != "plugin" or user.params["plugin"] != SKIP_LN or user.params["version"] not in FIXED_SKIP_LN_VERSIONS
                or user.inputs[0] != out):
            return None
        return user

    def fused_dense_skip_ln(self, conv: _Layer, gemm: "_Gemm", bias: torch.Tensor | None, skip_ln: _Layer):
        params, values = self.plugin_weights(skip_ln)
        compute = compute_type(params["type_id"])
        if (params["type_id"] == int(DataType.INT8) or compute != DataType(conv.params["compute_dtype"])
                or DataType(skip_ln.params["output_dtypes"][0]) != compute):
            return None
        total_bias = np.array(conv.params["bias"] if conv.params["bias"] is not None else 0.0, dtype=np.float32)
        total_bias = total_bias + np.array(values.get("bias", 0.0), dtype=np.float32).ravel()
        total_bias = np.broadcast_to(total_bias, (params["hidden_size"],))
        ln = self.layernorm_params(params, values)
        run = _dense_skip_layernorm(gemm, self.tensor(total_bias, torch.float32), *ln)
        return run, (conv.inputs[0], skip_ln.inputs[1]), skip_ln.outputs, [conv, skip_ln]

    def layernorm_params(self, params: dict[str, Any], values: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, float]:
        gamma, beta = self.tensor(values["gamma"], torch.float32), self.tensor(values["beta"], torch.float32)
        eps = ops.skip_layernorm_eps(params["hidden_size"], TORCH_DTYPE[compute_type(params["type_id"])])
        return gamma, beta, eps

    def match_plugin(self, layer: _Layer):
        name, version = layer.params["plugin"], layer.params["version"]
        if name == EMB_LN and version in ("1", "6"):
            return self.fast_embedding(layer)
        if name == EMB_LN and version in VARLEN_EMB_LN_VERSIONS:
            return self.fast_embedding_varlen(layer, VARLEN_EMB_LN_VERSIONS[version])
        if name == QKV and version in ("1", "4"):
            return self.fast_attention(layer)
        if name == QKV and version in ("2", "5"):
            return self.fast_attention_varlen(layer)
        if name == SKIP_LN and version in FIXED_SKIP_LN_VERSIONS:
            params, values = self.plugin_weights(layer)
            compute = TORCH_DTYPE[compute_type(params["type_id"])]
            if params["type_id"] == int(DataType.INT8):
                return None
            bias = self.tensor(values["bias"], torch.float32) if "bias" in values else None
            return _skip_layernorm(compute, bias, *self.layernorm_params(params, values)), layer.inputs, layer.outputs, [layer]
        return None

    def embedding_weights(self, layer: _Layer):
        """(params, [word, token type, position] tables, gamma, beta), or None if the types differ."""
        params, values = self.plugin_weights(layer)
        out_type = DataType(params["output_type"])
        if DataType(layer.params["output_dtypes"][0]) != out_type:
            return None
        dt = TORCH_DTYPE[out_type]
        hidden = params["hidden_size"]
        tables = [self.tensor(values[f"bert_embeddings_{k}_embeddings"], dt).reshape(-1, hidden)
                  for k in ("word", "token_type", "position")]
        gamma, beta = (self.tensor(values[f"bert_embeddings_layernorm_{k}"], torch.float32) for k in ("gamma", "beta"))
        return params, tables, gamma, beta

    def fast_embedding_varlen(self, layer: _Layer, megatron: bool):
        weights = self.embedding_weights(layer)
        if weights is None:
            return None
        _, tables, gamma, beta = weights
        return _embedding_varlen(tables, gamma, beta, megatron), layer.inputs, layer.outputs, [layer]

    def fast_embedding(self, layer: _Layer):
        weights = self.embedding_weights(layer)
        if weights is None:
            return None
        params, tables, gamma, beta = weights
        dt = tables[0].dtype
        bias_slot = self.num_slots
        self.num_slots += 1
        self.key_bias_slot[layer.outputs[1]] = bias_slot
        # The attention layers read the bias in their compute dtype, the MHA type of this plugin.
        mha = TORCH_DTYPE[compute_type(params["mha_type_id"])]
        self.key_bias_dtype[bias_slot] = mha
        run = _embedding(tables, gamma, beta, dt, mha)
        return run, layer.inputs, (*layer.outputs, bias_slot), [layer]

    def fast_attention(self, layer: _Layer):
        params, _ = self.plugin_weights(layer)
        if params["type_id"] == int(DataType.INT8) or DataType(layer.params["output_dtypes"][0]) != DataType(params["type_id"]):
            return None
        heads, dtype = params["num_heads"], TORCH_DTYPE[DataType(params["type_id"])]
        if not params["has_mask"]:
            return _attention(heads, dtype), (layer.inputs[0],), layer.outputs, [layer]
        bias_slot = self.key_bias_slot.get(layer.inputs[1])
        if bias_slot is None or self.key_bias_dtype[bias_slot] != dtype:
            return _attention_from_mask(heads, dtype), layer.inputs, layer.outputs, [layer]
        return _attention(heads, dtype), (layer.inputs[0], bias_slot), layer.outputs, [layer]

    def fast_attention_varlen(self, layer: _Layer):
        params, _ = self.plugin_weights(layer)
        if not params["var_seqlen"]:
            return self.fast_attention(layer)
        heads, type_id = params["num_heads"], params["type_id"]
        head_size = params["hidden_size"] // heads
        # The fused varlen kernels take head sizes that are multiples of 8, up to 256.
        if (type_id == int(DataType.INT8) or DataType(layer.params["output_dtypes"][0]) != DataType(type_id)
                or head_size % 8 or head_size > 256):
            return None
        qkv, _, cu_seqlens, max_seqlen = layer.inputs
        return _attention_varlen(heads, TORCH_DTYPE[DataType(type_id)]), (qkv, cu_seqlens, max_seqlen), layer.outputs, [layer]


def _with_releases(steps: list[Any], keep: set[int], step_type: type) -> list[Any]:
    """Insert after each step a step that drops the slots no later step reads (the executor keeps
    every slot of a run otherwise: 24 GB of activations for BERT-large at 384 × 128)."""
    last_use: dict[int, int] = {}
    for i, step in enumerate(steps):
        for slot in (*step.inputs, *step.outputs):
            last_use[slot] = i
    dead_after: dict[int, list[int]] = {}
    for slot, i in last_use.items():
        if slot not in keep:
            dead_after.setdefault(i, []).append(slot)
    result = []
    for i, step in enumerate(steps):
        result.append(step)
        if i in dead_after:
            dead = tuple(sorted(dead_after[i]))
            result.append(step_type(RELEASE_STEP, _release(len(dead)), (), dead))
    return result


def _release(count: int) -> Callable[[], tuple[None, ...]]:
    nothing = (None,) * count
    return lambda: nothing


# ---- the fused steps: closures over prepared weights; tensors keep the network's shapes.

Run = Callable[..., tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class _Gemm:
    """``rows [M, in] @ weightᵀ`` on the dense [out, in] weight: the tuned cuBLASLt GEMM
    (``cublaslt.linear``), or at few FP16 rows the Triton ``few_rows_gemm``; the semi-structured
    sparse GEMM when ``sparse`` holds the weight's 2:4 form.  Results are contiguous [M, out]."""

    weight: torch.Tensor
    sparse: torch.Tensor | None

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def few_rows(self, rows: torch.Tensor) -> bool:
        """The one rule for the batch-1 path: dense FP16 products inside the PDL chain's rows
        (``pdl.CHAIN_MAX_ROWS``: at 256 and 384 rows every BERT GEMM measured 4-56 % slower than
        cuBLASLt, and BERT-large 384 × 1 slower end to end)."""
        return (self.sparse is None and self.dtype == torch.float16 and rows.shape[0] <= CHAIN_MAX_ROWS
                and os.environ.get(FEW_ROWS_ENV, "1") != "0")

    def __call__(self, rows: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
        """``gelu?(rows @ weightᵀ + bias)``; the sparse GEMM's GELU is one Triton bias + GELU pass after it."""
        if self.sparse is not None:
            product = F.linear(rows, self.sparse, None if gelu else bias).contiguous()
            if not gelu:
                return product
            from helpers.portable.kernels.gelu import bias_gelu_into

            y = torch.empty_like(product)
            bias_gelu_into(y, product, bias)
            return y
        if self.few_rows(rows):
            from helpers.portable.kernels import few_rows_gemm

            return few_rows_gemm.linear(rows, self.weight, bias, gelu)
        return cublaslt.linear(rows, self.weight, bias, gelu=gelu)

    def summands(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The product as (S blocks of [M, out] whose sum it is, S), for a skip-LayerNorm to sum:
        split-K float32 partials at few rows, else the product itself (S = 1)."""
        if self.few_rows(rows):
            from helpers.portable.kernels import few_rows_gemm

            partials = few_rows_gemm.partial_products(rows, self.weight)
            return partials, partials.shape[0]
        return self(rows), 1


def _dense(gemm: _Gemm, bias: torch.Tensor | None, spatial: int) -> Run:
    """x [..., C, 1, ...] (``spatial`` trailing ones) → [..., K, 1, ...]."""
    ones = (1,) * spatial

    def run(x: torch.Tensor) -> tuple[torch.Tensor]:
        y = gemm(x.to(gemm.dtype).reshape(-1, gemm.in_features), bias)
        return (y.view(*x.shape[: x.dim() - spatial - 1], gemm.out_features, *ones),)

    return run


def _dense_gelu(gemm: _Gemm, bias: torch.Tensor, spatial: int) -> Run:
    """The GEMM with the bias + tanh GELU in its epilogue (``_Gemm``)."""
    ones = (1,) * spatial

    def run(x: torch.Tensor) -> tuple[torch.Tensor]:
        y = gemm(x.to(gemm.dtype).reshape(-1, gemm.in_features), bias, gelu=True)
        return (y.view(*x.shape[: x.dim() - spatial - 1], gemm.out_features, *ones),)

    return run


def _dense_skip_layernorm(gemm: _Gemm, bias: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                          eps: float) -> Run:
    from helpers.portable.kernels.norms import skip_layernorm_into

    def run(x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor]:
        y, splits = gemm.summands(x.to(gemm.dtype).reshape(-1, gemm.in_features))
        skip = skip.to(gemm.dtype).contiguous()
        out = torch.empty_like(skip)
        skip_layernorm_into(out, None, y, skip, gamma, beta, bias, eps, splits)
        return (out,)

    return run


def _skip_layernorm(compute: torch.dtype, bias: torch.Tensor | None, gamma: torch.Tensor, beta: torch.Tensor,
                    eps: float) -> Run:
    from helpers.portable.kernels.norms import skip_layernorm_into

    def run(x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor]:
        x, skip = x.to(compute).contiguous(), skip.to(compute).contiguous()
        out = torch.empty_like(x)
        skip_layernorm_into(out, None, x, skip, gamma, beta, bias, eps)
        return (out,)

    return run


def _embedding(tables: list[torch.Tensor], gamma: torch.Tensor, beta: torch.Tensor, dtype: torch.dtype,
               bias_dtype: torch.dtype) -> Run:
    from helpers.portable.kernels.norms import embed_layernorm_into, mask_index_and_bias_into

    word, token_type, position = tables
    hidden = gamma.numel()

    def run(ids: torch.Tensor, segs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        seq_len, batch = ids.shape
        out = torch.empty(seq_len, batch, hidden, 1, 1, dtype=dtype, device=ids.device)
        embed_layernorm_into(out, None, ids, segs, None, word, token_type, position, gamma, beta)
        index = torch.empty(batch, 1, dtype=torch.int32, device=ids.device)
        bias = torch.empty(batch, 1, 1, seq_len, dtype=bias_dtype, device=ids.device)
        mask_index_and_bias_into(index, bias, mask)
        return out, index, bias

    return run


def packed_positions(cu_seqlens: torch.Tensor, tokens: int) -> torch.Tensor:
    """[T] position of every packed token in its sequence, -1 past ``cu_seqlens[-1]``; on the
    device, no host synchronisation."""
    index = torch.arange(tokens, device=cu_seqlens.device)
    ends = cu_seqlens[1:].long()
    sequence = torch.searchsorted(ends, index, right=True)
    starts = torch.cat([cu_seqlens[:1].long(), ends])
    positions = index - starts[sequence]
    return torch.where(index < ends[-1:], positions, -1)


def _embedding_varlen(tables: list[torch.Tensor], gamma: torch.Tensor, beta: torch.Tensor, megatron: bool) -> Run:
    from helpers.portable.kernels.norms import embed_layernorm_into

    word, token_type, position = tables
    hidden = gamma.numel()

    def run(ids: torch.Tensor, segs: torch.Tensor, cu_seqlens: torch.Tensor, _max_seqlen: torch.Tensor
            ) -> tuple[torch.Tensor, ...]:
        tokens = ids.shape[0]
        out = torch.empty(tokens, hidden, 1, 1, dtype=word.dtype, device=ids.device)
        summed = torch.empty_like(out) if megatron else None
        if tokens:
            positions = packed_positions(cu_seqlens, tokens)
            embed_layernorm_into(out, summed, ids.view(tokens, 1), segs.view(tokens, 1), positions.view(tokens, 1),
                                 word, token_type, position, gamma, beta)
        second = summed if megatron else torch.zeros((), dtype=torch.int32, device=ids.device)
        return out, second

    return run


def _attention_varlen(heads: int, dtype: torch.dtype) -> Run:
    def run(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: torch.Tensor) -> tuple[torch.Tensor]:
        tokens = qkv.shape[0]
        # The length of max_seqlen bounds every sequence's length and is known on the host.
        ctx = attention_varlen(qkv.to(dtype).reshape(tokens, -1), cu_seqlens, heads, max_seqlen.shape[0])
        return (ctx.view(tokens, -1, 1, 1),)

    return run


def _attention(heads: int, dtype: torch.dtype) -> Run:
    def run(qkv: torch.Tensor, key_bias: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        ctx = attention_fixed_biased(qkv.to(dtype).flatten(2), key_bias, heads)
        return (ctx.unflatten(-1, (-1, 1, 1)),)

    return run


def _attention_from_mask(heads: int, dtype: torch.dtype) -> Run:
    def run(qkv: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor]:
        bias = key_padding_bias(mask[:, 0], qkv.shape[0], dtype)
        ctx = attention_fixed_biased(qkv.to(dtype).flatten(2), bias, heads)
        return (ctx.unflatten(-1, (-1, 1, 1)),)

    return run
