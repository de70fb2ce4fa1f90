"""INT8 (and FP8) in the portable engine: calibration at build time, lowering at load time.

Build (``calibrate_engine_description``, called by the portable builder's ``compile_network`` for
INT8 builds with a calibrator): the engine description is run in FP32 over the calibrator's batches, every
float tensor goes through ``helpers.portable.calibration``, and each tensor without a range set by
the network (``ITensor.set_dynamic_range``, e.g. GELU10) gets the calibrated one.  The ranges are
stored in the engine file with the tensors.

Load (``lower_int8``, called on the reference plan of an INT8 engine before the CUDA fast-path
rewrite): steps that TensorRT would run in INT8 are replaced by the exact integer arithmetic of
``helpers.portable.quantization``; everything else keeps its float step.  The rules:

* a 1×1 convolution whose input has a dynamic range is an INT8 GEMM: the input quantized with its
  range, per-output-channel weight scales, int32 accumulation, float output plus bias (its output
  is quantized by whoever consumes it in INT8).  ``--strict`` (PREFER/OBEY_PRECISION_CONSTRAINTS)
  keeps a convolution whose layer precision was set to a float type in that type.  With the FP8
  builder flag, these GEMMs are FP8 E4M3 with the same ranges instead;
* a QKV-to-context plugin with ``type_id`` INT8 (``-imh``), and the interleaved versions, run the
  fused INT8 attention: Q·Kᵀ and P·V on int8 codes, probabilities quantized with ``dq_probs``,
  the context quantized with its output range;
* a skip-LayerNorm plugin with ``type_id`` INT8 (``-iln``), and the interleaved versions, take
  INT8 input and skip and produce an INT8 output (Megatron: both outputs);
* a tensor whose range is missing keeps its layer in float, as TensorRT falls back to higher
  precision for tensors it has no scale for.

Replaced steps are named ``int8:<layer name>`` and keep the plan's one-step-per-layer order, so the
CUDA fast-path rewrite (``kernels/plan.py``) leaves them alone.

On CUDA (where ``kernels/plan.py`` runs its fast path) the same arithmetic runs with few passes over
memory: an INT8 GEMM is one Triton tensor-core GEMM on weight codes made once at load
(``kernels/int8_gemm.py``) with the dequantize + bias and the builder's 8-layer GELU after it in its
epilogue (the chain's other steps become empty steps), behind one quantize pass
(``kernels/quant_kernels.py``) unless its producer already wrote the int8 codes; FP8 is one
quantize pass and ``torch._scaled_mm`` with the bias in its epilogue.  ``-iln`` skip-LayerNorm is
one row pass; ``-imh`` attention is one Triton kernel with both products on int8 codes and the
probabilities quantized with ``dq_probs``, as in the CPU simulation (``kernels/int8_attention.py``).
A tensor read only by INT8 GEMMs, ``-iln`` skip-LayerNorms and ``-imh`` attention (the QKV GEMM's
output, the GELU output, ``-imh``'s context, the attention-output and FC2 GEMMs' outputs, each
skip-LayerNorm's output, which is the next GEMM's input and the next residual) is handed over as
int8 codes, so no quantize pass is left between them: the same codes, from the value rounded to the
engine's float type, as the separate passes make.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from helpers.portable import ops
from helpers.portable import quantization as q
from helpers.portable.calibration import CalibrationError, calibrate
from helpers.portable.enums import DataType
from helpers.portable.layers import TORCH_DTYPE, BuildError, is_known
from helpers.portable.plugins import QKV, SKIP_LN

STEP_PREFIX = "int8:"
CODES = "codes"  # how an INT8 tensor is handed over on CUDA (``_Lowering.handover``)
_STRICT_FLAGS = ("PREFER_PRECISION_CONSTRAINTS", "OBEY_PRECISION_CONSTRAINTS")
_FLOAT_PRECISIONS = (int(DataType.FLOAT), int(DataType.HALF))

Run = Callable[..., Sequence[torch.Tensor]]


# ---------------------------------------------------------------------------------------------
# Build time: calibration


def _calibration_input_specs(description: dict[str, Any]) -> list[tuple[str, tuple[int, ...], DataType]]:
    """(name, shape, dtype) of every input: its static shape, else the first profile's opt shape."""
    specs = []
    for slot in description["inputs"]:
        tensor = description["tensors"][slot]
        shape = tensor["shape"]
        if not is_known(shape):
            shape = description["profiles"][0][tensor["name"]][1]
        specs.append((tensor["name"], tuple(shape), DataType(tensor["dtype"])))
    return specs


def calibrate_engine_description(description: dict[str, Any], calibrator: Any, dev: torch.device) -> None:
    """Fill the missing ``dynamic_range`` of the description's tensors from ``calibrator``.

    Raises ``BuildError`` with a one-line message when calibration cannot run.
    """
    from helpers.portable.runtime import build_plan

    tensors = description["tensors"]
    names = [t["name"] for t in tensors]
    input_slots = {tensors[slot]["name"]: slot for slot in description["inputs"]}
    plans: list[Any] = []  # built on the first batch: a build that reads a cache needs none

    def run_fp32(feeds: dict[str, torch.Tensor], observe: Callable[[str, torch.Tensor], None]) -> None:
        if not plans:
            plans.append(build_plan(description, dev))
        plan = plans[0]
        buffers: list[Any] = [None] * plan.num_slots
        for slot, value in plan.constants.items():
            buffers[slot] = value
            observe(names[slot], value)
        for name, value in feeds.items():
            buffers[input_slots[name]] = value
        for step in plan.steps:
            results = step.run(*[buffers[i] for i in step.inputs])
            for slot, value in zip(step.outputs, results):
                buffers[slot] = value
                observe(names[slot], value)

    try:
        ranges = calibrate(_calibration_input_specs(description), calibrator, run_fp32, dev)
    except (CalibrationError, ValueError, OSError) as err:
        raise BuildError(f"INT8 calibration failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    for tensor in tensors:
        if tensor["dynamic_range"] is None and tensor["name"] in ranges:
            amax = float(ranges[tensor["name"]])
            tensor["dynamic_range"] = [-amax, amax]


# ---------------------------------------------------------------------------------------------
# Load time: lowering


def is_quantized_build(description: dict[str, Any]) -> bool:
    flags = description["build"]["flags"]
    return "INT8" in flags or "FP8" in flags


def lower_int8(plan: Any, description: dict[str, Any], dev: torch.device) -> Any:
    """The plan with its INT8 (FP8) layers' steps replaced; unchanged for float engines."""
    from helpers.portable.runtime import Plan, Step

    if not is_quantized_build(description):
        return plan
    flags = description["build"]["flags"]
    lowering = _Lowering(description, dev, strict=any(f in flags for f in _STRICT_FLAGS), fp8="FP8" in flags)
    runnable = [index for index, layer in enumerate(description["layers"]) if layer["kind"] != "constant"]
    step_of = dict(zip(runnable, plan.steps))
    gelu_chains = _gelu_chains(plan, description, dev)
    lowering.plan_handovers(description, gelu_chains)
    replaced: dict[int, Any] = {}
    for index in runnable:
        layer, step = description["layers"][index], step_of[index]
        if index in replaced:
            continue
        chain = gelu_chains.get(index) if layer["kind"] == "convolution" else None
        run = lowering.run_for(layer, None if chain is None else description["layers"][chain[-1]]["outputs"][0])
        if run is None:
            continue
        if chain is None:
            replaced[index] = Step(STEP_PREFIX + layer["name"], run, step.inputs, step.outputs)
            continue
        # The builder's 8-layer GELU after an INT8 GEMM is applied by the GEMM's step (in its
        # dequantize pass); the chain's steps stay in place as empty steps (one step per layer).
        last = description["layers"][chain[-1]]
        replaced[index] = Step(STEP_PREFIX + layer["name"], run, step.inputs, tuple(last["outputs"]))
        for member in chain:
            replaced[member] = Step(STEP_PREFIX + description["layers"][member]["name"], _nothing, (), ())
    steps = [replaced.get(index, step_of[index]) for index in runnable]
    return Plan(steps=steps, num_slots=plan.num_slots, constants=plan.constants)


def _gelu_chains(plan: Any, description: dict[str, Any], dev: torch.device) -> dict[int, list[int]]:
    """Convolution index → indices of the GELU chain right after it, where the fast path fuses (CUDA)."""
    from helpers.portable.kernels.plan import _Rewriter, fast_kernels_enabled

    if not fast_kernels_enabled(dev):
        return {}
    rewriter = _Rewriter(plan, description, dev)
    chains = {}
    for layer in rewriter.layers:
        if layer.kind == "convolution":
            chain = rewriter.gelu_chain(layer)
            if chain is not None:
                chains[layer.index] = [member.index for member in chain]
    return chains


def _then_gelu(run: Run) -> Run:
    from helpers.portable import kernels

    def fused(x: torch.Tensor) -> Sequence[torch.Tensor]:
        (y,) = run(x)
        return (kernels.gelu_tanh(y),)

    return fused


def _nothing() -> Sequence[torch.Tensor]:
    return ()


class _Lowering:
    def __init__(self, description: dict[str, Any], dev: torch.device, strict: bool, fp8: bool) -> None:
        from helpers.portable.kernels.plan import fast_kernels_enabled

        self.dev, self.strict, self.fp8 = dev, strict, fp8
        self.fast = fast_kernels_enabled(dev)
        self.amax: dict[int, float] = {}
        for slot, tensor in enumerate(description["tensors"]):
            if tensor["dynamic_range"] is not None:
                self.amax[slot] = max(abs(float(v)) for v in tensor["dynamic_range"])
        # Slot → how its producer hands it over on CUDA: CODES (int8 codes of its range); absent:
        # plain float values.
        self.handover: dict[int, str] = {}

    def int8_gemm_source(self, layer: dict[str, Any]) -> int | None:
        """The slot a convolution reads as an INT8 (FP8) GEMM; None where it stays a float layer."""
        p = layer["params"]
        source = layer["inputs"][0]
        if source not in self.amax or any(k != 1 for k in p["kernel_shape"]) or p.get("num_groups", 1) != 1:
            return None
        if self.strict and layer.get("precision") in _FLOAT_PRECISIONS:
            return None
        return source

    def fast_int8_attention_source(self, layer: dict[str, Any]) -> int | None:
        """The QKV slot of a QKV-to-context plugin that runs ``_fast_int8_attention``."""
        p = layer["params"]
        if not self.fast or layer["kind"] != "plugin" or p["plugin"] != QKV or p["version"] in ("3", "6"):
            return None
        from helpers.portable.runtime import _LoadedPlugin

        params = _LoadedPlugin(p).params
        if params.get("type_id") != int(DataType.INT8) or params.get("var_seqlen"):
            return None
        if self.scales([layer["inputs"][0], layer["outputs"][0]]) is None:
            return None
        return int(layer["inputs"][0])

    def fast_int8_skip_layernorm(self, layer: dict[str, Any]) -> bool:
        """Whether a layer is an ``-iln`` skip-LayerNorm that runs ``_fast_int8_skip_layernorm``."""
        p = layer["params"]
        if not self.fast or layer["kind"] != "plugin" or p["plugin"] != SKIP_LN or p["version"] in ("3", "4", "7", "8"):
            return False
        from helpers.portable.runtime import _LoadedPlugin

        return _LoadedPlugin(p).params.get("type_id") == int(DataType.INT8) and len(layer["outputs"]) == 1 \
            and self.scales([*layer["inputs"][:2], *layer["outputs"]]) is not None

    def plan_handovers(self, description: dict[str, Any], gelu_chains: dict[int, list[int]]) -> None:
        """Fill ``handover``: INT8 codes for a tensor that only fast INT8 GEMMs, ``-iln``
        skip-LayerNorms and ``-imh`` attention read, where its producer can write them (an INT8
        GEMM, with its fused GELU; ``-imh`` attention's context; an ``-iln`` skip-LayerNorm)."""
        if not self.fast or self.fp8:
            return
        layers = description["layers"]
        readers: dict[int, list[dict[str, Any]]] = {}
        for layer in layers:
            for slot in set(layer["inputs"]):
                readers.setdefault(slot, []).append(layer)
        engine_outputs = set(description["outputs"])

        def wanted(slot: int) -> str | None:
            users = readers.get(slot, [])
            if slot in engine_outputs or not users:
                return None
            if all((u["kind"] == "convolution" and u["inputs"] == [slot] and self.int8_gemm_source(u) == slot)
                   or (self.fast_int8_skip_layernorm(u) and slot in u["inputs"][:2])
                   or self.fast_int8_attention_source(u) == slot for u in users):
                return CODES
            return None

        for index, layer in enumerate(layers):
            if layer["kind"] == "convolution" and self.int8_gemm_source(layer) is not None:
                chain = gelu_chains.get(index)
                result = layers[chain[-1]]["outputs"][0] if chain else layer["outputs"][0]
            elif self.fast_int8_attention_source(layer) is not None or self.fast_int8_skip_layernorm(layer):
                result = layer["outputs"][0]
            else:
                continue
            how = wanted(result)
            if how is not None:
                self.handover[result] = how

    def scales(self, slots: Sequence[int]) -> list[float] | None:
        if any(slot not in self.amax for slot in slots):
            return None
        return [q.scale_from_amax(self.amax[slot]) for slot in slots]

    def run_for(self, layer: dict[str, Any], gelu_output: int | None = None) -> Run | None:
        """The layer's INT8 step (a convolution's followed by the tanh GELU when ``gelu_output``, the
        slot of the GELU's output, is set)."""
        if layer["kind"] == "convolution":
            return self.convolution(layer, gelu_output)
        if layer["kind"] == "plugin" and layer["params"]["plugin"] in (QKV, SKIP_LN):
            return self.plugin(layer)
        return None

    def float32(self, values: Any) -> torch.Tensor:
        return torch.from_numpy(np.array(values, dtype=np.float32)).to(self.dev)

    # ---- GEMMs

    def convolution(self, layer: dict[str, Any], gelu_output: int | None) -> Run | None:
        p = layer["params"]
        gelu = gelu_output is not None
        result = layer["outputs"][0] if gelu_output is None else gelu_output
        source = self.int8_gemm_source(layer)
        if source is None:
            return None
        weight = self.float32(p["kernel"]).reshape(p["num_output_maps"], -1)
        bias = None if p["bias"] is None else self.float32(p["bias"])
        out_dtype = TORCH_DTYPE[DataType(p["output_dtypes"][0])]
        spatial = len(p["kernel_shape"])
        if self.fast and self.fp8:
            fast = fast_fp8_gemm(weight, bias, self.amax[source], gelu, out_dtype)
            if fast is not None:
                return _channel_gemm(fast, spatial, out_dtype)
        elif self.fast:
            out_amax = self.amax[result] if self.handover.get(result) == CODES else None
            fast = fast_int8_gemm(weight, bias, self.amax[source], gelu, out_dtype, out_amax)
            return _channel_gemm(fast, spatial, out_dtype if out_amax is None else torch.int8)
        gemm = fp8_gemm(weight, bias, self.amax[source]) if self.fp8 else int8_gemm(weight, bias, self.amax[source])
        run = _channel_gemm(gemm, spatial, out_dtype)
        return _then_gelu(run) if gelu else run

    # ---- plugins

    def plugin(self, layer: dict[str, Any]) -> Run | None:
        from helpers.portable.plugins_interleaved import channels_first, channels_last, qkv_blocks_to_per_head
        from helpers.portable.runtime import _LoadedPlugin

        loaded = _LoadedPlugin(layer["params"])
        params, values = loaded.params, loaded.values
        name, version = layer["params"]["plugin"], layer["params"]["version"]
        interleaved = version in (("3", "6") if name == QKV else ("3", "4", "7", "8"))
        if not interleaved and params.get("type_id") != int(DataType.INT8):
            return None
        out_types = [TORCH_DTYPE[DataType(t)] for t in layer["params"]["output_dtypes"]]
        if name == QKV:
            scales = self.scales([layer["inputs"][0], layer["outputs"][0]])
            if scales is None:
                return None
            heads, dq_probs = params["num_heads"], float(params["dq_probs"])
            qkv_scale, ctx_scale = scales
            if interleaved:

                def attention(qkv: torch.Tensor, cu: torch.Tensor, dummy: torch.Tensor) -> Sequence[torch.Tensor]:
                    tokens = qkv_blocks_to_per_head(channels_last(qkv), heads)
                    ctx = q.int8_attention_varlen(tokens, cu, dummy.shape[0], heads, qkv_scale, ctx_scale, dq_probs)
                    return (channels_first(ctx).to(out_types[0]),)

                return attention
            if params.get("var_seqlen"):

                def attention_packed(qkv: torch.Tensor, mask: torch.Tensor, cu: torch.Tensor, dummy: torch.Tensor) -> Sequence[torch.Tensor]:
                    ctx = q.int8_attention_varlen(qkv.flatten(1), cu, dummy.shape[0], heads, qkv_scale, ctx_scale, dq_probs)
                    return (ctx.unflatten(-1, (-1, 1, 1)).to(out_types[0]),)

                return attention_packed
            has_mask = bool(params["has_mask"])
            if self.fast:
                ctx_codes = self.handover.get(layer["outputs"][0]) == CODES
                return _fast_int8_attention(heads, has_mask, qkv_scale, ctx_scale, dq_probs,
                                            torch.int8 if ctx_codes else out_types[0])

            def attention_fixed(qkv: torch.Tensor, mask: torch.Tensor | None = None) -> Sequence[torch.Tensor]:
                mask_idx = mask[:, 0] if has_mask and mask is not None else None
                ctx = q.int8_attention(qkv.flatten(2), mask_idx, heads, qkv_scale, ctx_scale, dq_probs)
                return (ctx.unflatten(-1, (-1, 1, 1)).to(out_types[0]),)

            return attention_fixed

        # skip-LayerNorm: INT8 input, skip and output(s)
        scales = self.scales([*layer["inputs"][:2], *layer["outputs"]])
        if scales is None:
            return None
        x_scale, skip_scale, out_scale = scales[:3]
        sum_scale = scales[3] if len(scales) > 3 else None
        gamma, beta = self.float32(values["gamma"]).ravel(), self.float32(values["beta"]).ravel()
        bias = self.float32(values["bias"]).ravel() if "bias" in values else None
        eps = ops.skip_layernorm_eps(gamma.numel(), torch.int8)
        if self.fast_int8_skip_layernorm(layer):
            out_codes = self.handover.get(layer["outputs"][0]) == CODES
            return _fast_int8_skip_layernorm(gamma, beta, bias, x_scale, skip_scale, out_scale, eps,
                                             torch.int8 if out_codes else out_types[0])

        def skip_layernorm(x: torch.Tensor, skip: torch.Tensor) -> Sequence[torch.Tensor]:
            if interleaved:
                x_rows, skip_rows = channels_last(x), channels_last(skip)
            else:
                axis = 2 if x.dim() == 5 else 1
                x_rows, skip_rows = x.movedim(axis, -1), skip.movedim(axis, -1)
            normed, summed = q.int8_skip_layernorm(x_rows, skip_rows, gamma, beta, x_scale, skip_scale, out_scale, eps, bias)
            results = [normed]
            if sum_scale is not None:
                results.append(q.fake_quantize(summed, sum_scale))
            if interleaved:
                return tuple(channels_first(r).to(t) for r, t in zip(results, out_types))
            return tuple(r.movedim(-1, axis).to(t) for r, t in zip(results, out_types))

        return skip_layernorm


# The GEMMs below hand float32 rows to ``quantization``, whose result takes its input's dtype: an INT8
# input may be carried as half values (an ``-imh`` attention's context), and the result must not be
# rounded to half before ``_channel_gemm`` gives it the layer's output type.


def int8_gemm(weight: torch.Tensor, bias: torch.Tensor | None, in_amax: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """rows [M, C] → float32 [M, K] through ``quantization.int8_linear`` with prepared weight codes."""
    codes = q.quantize_linear_weights(weight)
    in_scale = q.scale_from_amax(in_amax)
    return lambda rows: q.int8_linear(rows.float(), codes, bias, in_scale)


def fp8_gemm(weight: torch.Tensor, bias: torch.Tensor | None, in_amax: float) -> Callable[[torch.Tensor], torch.Tensor]:
    codes = q.quantize_fp8_weights(weight)
    in_scale = q.fp8_input_scale(in_amax, weight.device)
    return lambda rows: q.fp8_linear(rows.float(), codes, bias, in_scale)


def _channel_gemm(gemm: Callable[[torch.Tensor], torch.Tensor], spatial: int, out_dtype: torch.dtype) -> Run:
    """A 1×1 convolution over the channel axis (``spatial`` trailing axes) from a row GEMM."""

    def run(x: torch.Tensor) -> Sequence[torch.Tensor]:
        channel_axis = x.dim() - spatial - 1
        trailing = x.shape[channel_axis + 1 :]
        if all(d == 1 for d in trailing):
            rows = gemm(x.reshape(-1, x.shape[channel_axis]))
            y = rows.reshape(*x.shape[:channel_axis], rows.shape[-1], *trailing)
        else:
            moved = x.movedim(channel_axis, -1)
            rows = gemm(moved.reshape(-1, moved.shape[-1]))
            y = rows.reshape(*moved.shape[:-1], rows.shape[-1]).movedim(-1, channel_axis)
        return (y.to(out_dtype),)

    return run


# ---------------------------------------------------------------------------------------------
# CUDA: the same arithmetic with the quantize / dequantize passes in Triton (kernels/quant_kernels.py)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def fast_int8_gemm(
    weight: torch.Tensor, bias: torch.Tensor | None, in_amax: float, gelu: bool, out_dtype: torch.dtype,
    out_amax: float | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``int8_gemm`` (then the tanh GELU when ``gelu``) as the Triton GEMM with the dequantize in
    its epilogue, behind one quantize pass, or none when given int8 codes (of ``in_amax``'s grid).

    ``out_amax`` set: the output is its int8 codes on that range's grid, from the ``out_dtype``
    value the unfused steps would hand to the next layer's quantize pass.
    """
    from helpers.portable.kernels import int8_gemm as ig
    from helpers.portable.kernels import quant_kernels as qk

    codes_w = q.quantize_linear_weights(weight)
    in_scale = q.scale_from_amax(in_amax)
    n, k = codes_w.codes.shape
    col_scales = (codes_w.scales * in_scale).contiguous()
    bias32 = None if bias is None else bias.float().contiguous()
    out_scale = None if out_amax is None else q.scale_from_amax(out_amax)

    def gemm(rows: torch.Tensor) -> torch.Tensor:
        m = rows.shape[0]
        if rows.dtype == torch.int8:
            codes = rows.contiguous()
        else:
            codes = torch.empty(m, k, dtype=torch.int8, device=rows.device)
            qk.quantize_into(codes, rows.contiguous(), qk.INT8_CODES, in_scale)
        y = torch.empty(m, n, dtype=out_dtype if out_scale is None else torch.int8, device=rows.device)
        ig.int8_gemm_into(y, codes, codes_w.codes, col_scales, bias32, gelu=gelu, out_scale=out_scale,
                          value_dtype=out_dtype)
        return y

    return gemm


def fast_fp8_gemm(
    weight: torch.Tensor, bias: torch.Tensor | None, in_amax: float, gelu: bool, out_dtype: torch.dtype
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``fp8_gemm`` with its input cast in one Triton pass and the bias in cuBLASLt's epilogue;
    None where ``_scaled_mm`` does not apply (sizes not multiples of 16, float32 output)."""
    from helpers.portable import kernels
    from helpers.portable.kernels import quant_kernels as qk

    n, k = weight.shape
    if k % 16 or n % 16 or out_dtype not in (torch.float16, torch.bfloat16):
        return None
    codes_w = q.quantize_fp8_weights(weight)
    in_scale = q.fp8_input_scale(in_amax, weight.device)
    scale_value = float(in_scale)
    bias_out = None if bias is None else bias.to(out_dtype)

    def gemm(rows: torch.Tensor) -> torch.Tensor:
        m = rows.shape[0]
        codes = torch.zeros(_round_up(m, 16), k, dtype=torch.float8_e4m3fn, device=rows.device) if m % 16 else \
            torch.empty(m, k, dtype=torch.float8_e4m3fn, device=rows.device)
        qk.quantize_into(codes[:m], rows.contiguous(), qk.FP8_CODES, scale_value)
        y = torch._scaled_mm(codes, codes_w.codes.t(), scale_a=in_scale, scale_b=codes_w.scale, bias=bias_out,
                             out_dtype=out_dtype)[:m]
        return kernels.gelu_tanh(y) if gelu else y

    return gemm


def _fast_int8_attention(
    heads: int, has_mask: bool, qkv_scale: float, ctx_scale: float, dq_probs: float, out_type: torch.dtype
) -> Run:
    """``-imh`` attention on CUDA: ``quantization.int8_attention`` as one Triton kernel.  The QKV
    input may come as its int8 codes; ``out_type`` int8: the context is returned as its codes."""
    from helpers.portable.kernels.int8_attention import int8_attention_into

    def attention(qkv: torch.Tensor, mask: torch.Tensor | None = None) -> Sequence[torch.Tensor]:
        mask_idx = mask[:, 0] if has_mask and mask is not None else None
        rows = qkv.flatten(2).contiguous()
        out = torch.empty(*rows.shape[:2], rows.shape[2] // 3, dtype=out_type, device=rows.device)
        int8_attention_into(out, rows, mask_idx, heads, qkv_scale, ctx_scale, dq_probs)
        return (out.unflatten(-1, (-1, 1, 1)),)

    return attention


def _fast_int8_skip_layernorm(
    gamma: torch.Tensor, beta: torch.Tensor, bias: torch.Tensor | None, x_scale: float, skip_scale: float,
    out_scale: float, eps: float, out_type: torch.dtype,
) -> Run:
    """``-iln`` skip-LayerNorm on CUDA: ``quantization.int8_skip_layernorm`` as one Triton row pass.
    ``x`` and ``skip`` may come as their int8 codes; ``out_type`` int8: the output's codes."""
    from helpers.portable.kernels import quant_kernels as qk

    def skip_layernorm(x: torch.Tensor, skip: torch.Tensor) -> Sequence[torch.Tensor]:
        axis = 2 if x.dim() == 5 else 1
        x_rows, skip_rows = x.movedim(axis, -1).contiguous(), skip.movedim(axis, -1).contiguous()
        out = torch.empty_like(x_rows, dtype=out_type)
        qk.int8_skip_layernorm_into(out, x_rows, skip_rows, gamma, beta, bias, x_scale, skip_scale, out_scale, eps)
        return (out.movedim(-1, axis),)

    return skip_layernorm
