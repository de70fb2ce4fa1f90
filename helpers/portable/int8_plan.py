"""INT8 (and FP8) in the portable engine: the lowering pass of a quantized engine's plan at load time.

Steps that TensorRT would run in INT8 are lowered to the exact integer arithmetic of
``helpers.portable.quantization``; everything else is left to the later passes.  The rules:

* a 1×1 convolution whose input has a dynamic range is an INT8 GEMM: the input quantized with its
  range, per-output-channel weight scales, int32 accumulation, float output plus bias (its output
  is quantized by whoever consumes it in INT8).  ``--strict`` (PREFER/OBEY_PRECISION_CONSTRAINTS)
  keeps a convolution whose layer precision was set to a float type in that type.  With the FP8
  builder flag, these GEMMs are FP8 E4M3 with the same ranges instead (``s = amax / 448``, a
  per-tensor weight scale, float32 accumulation);
* a QKV-to-context plugin with ``type_id`` INT8 (``-imh``), and the interleaved versions, run the
  fused INT8 attention: Q·Kᵀ and P·V on int8 codes, probabilities quantized with ``dq_probs``,
  the context quantized with its output range;
* a skip-LayerNorm plugin with ``type_id`` INT8 (``-iln``), and the interleaved versions, take
  INT8 input and skip and produce an INT8 output (Megatron: both outputs);
* a tensor whose range is missing keeps its layer in float, as TensorRT falls back to higher
  precision for tensors it has no scale for.

The ranges come from the network (``ITensor.set_dynamic_range``) or from calibration at build
time (``calibration.calibrate_engine_description``), stored with the tensors in the engine file.

On CUDA (where the float fast path runs too) the same arithmetic runs with few passes over memory
(``kernels/int8_steps.py``): an INT8 GEMM is one Triton GEMM whose epilogue also applies the
builder's GELU, tanh or exact erf as the network's, when ``patterns.gelu_after`` finds one after it
(the GEMM's step covers the GELU's layers), and a tensor read only by INT8 GEMMs, ``-iln``
skip-LayerNorms and ``-imh`` attention (the QKV GEMM's output, the GELU output, ``-imh``'s context,
the attention-output and FC2 GEMMs' outputs, each skip-LayerNorm's output, which is the next GEMM's
input and the next residual) is handed over as int8 codes, so no quantize pass is left between
them: the same codes, from the value rounded to the engine's float type, as the separate passes
make, except after a GELU in a GEMM's epilogue, which runs in FP32 where the builder's GELU layers
round each intermediate to the engine's float type (in FP16 engines about 0.1 % of the GELU
output's codes then lie one step apart).  With FP8 GEMMs the same holds with E4M3 codes for a
tensor read only by FP8 GEMMs (the GELU output; ``-imh``'s context; an ``-iln`` skip-LayerNorm's
output that no other skip-LayerNorm reads, such as the last one's, read by the head); the GEMMs
then write int8 codes for ``-imh`` and ``-iln`` as above.  A tensor read by both kinds (an
``-iln`` output read by the next GEMM and the next skip-LayerNorm) is written by its
skip-LayerNorm in both forms in one pass: the int8 codes in its own slot, for the skip-LayerNorm,
and the E4M3 codes of the same value in a slot of their own (``lower_quantized`` adds it to the
plan), which the FP8 GEMM reads instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from helpers.portable import kernels, ops
from helpers.portable import quantization as q
from helpers.portable.enums import DataType
from helpers.portable.graph import Graph, Layer, Step
from helpers.portable.kernels.patterns import Gelu, gelu_after, is_dense
from helpers.portable.layers import TORCH_DTYPE
from helpers.portable.lowering import PlanBuilder
from helpers.portable.plugins import INTERLEAVED, QKV, SKIP_LN
from helpers.portable.plugins_interleaved import channels_first, channels_last, qkv_blocks_to_per_head

STEP_PREFIX = "int8:"
# How a quantized tensor is handed over on CUDA (``Int8Lowering.handover``): int8 codes of its INT8
# grid, E4M3 codes of its FP8 scale, or (an ``-iln`` output read by FP8 GEMMs and skip-LayerNorms)
# both: the int8 codes, and the E4M3 codes in a slot of their own for the GEMMs.
CODES, FP8_CODES, CODES_AND_FP8_CODES = "codes", "fp8 codes", "codes + fp8 codes"
ATTENTION, SKIP_LAYERNORM = "int8_attention", "int8_skip_layernorm"  # the steps' patterns
_FLOAT_PRECISIONS = (DataType.FLOAT, DataType.HALF)

Run = Callable[..., Sequence[torch.Tensor]]


@dataclass(frozen=True)
class HandoverCodes:
    """The codes a producer writes for its readers: ``dtype`` int8 (INT8 grid) or float8_e4m3fn, of ``scale``."""

    dtype: torch.dtype
    scale: float


def stored_dtype(codes: HandoverCodes | None, value_dtype: torch.dtype) -> torch.dtype:
    """What a producer stores: the ``codes`` it writes for its readers, else its values in ``value_dtype``."""
    return value_dtype if codes is None else codes.dtype


def gelus(graph: Graph) -> dict[int, Gelu]:
    """Convolution index → the builder's GELU right after it (``patterns.gelu_after``)."""
    found = {}
    for layer in graph.layers:
        if layer.kind == "convolution":
            gelu = gelu_after(graph, layer)
            if gelu is not None:
                found[layer.index] = gelu
    return found


def lower_quantized(builder: PlanBuilder) -> None:
    """Place the INT8 (FP8) step of every layer that runs quantized; nothing for float engines."""
    precision = builder.options.precision
    if not precision.quantized:
        return
    graph = builder.graph
    steps = None
    if builder.fast:
        # The CUDA steps' kernels need Triton, an optional dependency: imported only where they run.
        from helpers.portable.kernels import int8_steps

        steps = int8_steps
    lowering = Int8Lowering(graph, builder.device, precision.strict, precision.fp8, builder.fast, steps)
    # On CUDA an INT8 GEMM's step applies the GELU after it too (in its dequantize pass).
    fused = gelus(graph) if builder.fast else {}
    lowering.plan_handovers(fused)
    # The slot of the E4M3 codes of each tensor handed over in both forms: its producer's second
    # output, its FP8 GEMMs' input.
    fp8_copies = {slot: builder.new_slot() for slot, how in lowering.handover.items() if how == CODES_AND_FP8_CODES}
    for layer in graph.layers:
        if layer.kind == "constant" or builder.lowered(layer):
            continue
        covered = lowering.covered(layer, fused)
        if covered is not None:
            run, pattern = lowering.run_for(layer, fused.get(layer.index))
            inputs, outputs = layer.inputs, covered[-1].outputs
            if layer.kind == "convolution":
                inputs = tuple(fp8_copies.get(slot, slot) for slot in inputs)
            elif outputs[0] in fp8_copies:
                outputs = (*outputs, fp8_copies[outputs[0]])
            builder.place(Step(STEP_PREFIX + layer.name, run, inputs, outputs, pattern), covered)


def _then_gelu(run: Run, form: ops.GeluForm) -> Run:
    def fused(x: torch.Tensor) -> Sequence[torch.Tensor]:
        (y,) = run(x)
        return (kernels.elementwise_gelu(y, form),)

    return fused


class Int8Lowering:
    """The INT8 steps of one graph: ranges by slot; with ``fast`` (CUDA) the decisions of the CUDA
    plan (the hand-overs as codes), whose steps ``steps`` (``kernels.int8_steps``) builds."""

    def __init__(self, graph: Graph, dev: torch.device, strict: bool, fp8: bool, fast: bool,
                 steps: ModuleType | None = None) -> None:
        self.graph, self.dev, self.strict, self.fp8, self.fast, self.steps = graph, dev, strict, fp8, fast, steps
        self.amax: dict[int, float] = {t.slot: t.amax for t in graph.tensors if t.amax is not None}
        # Slot → how its producer hands it over on CUDA: CODES (int8 codes of its range),
        # FP8_CODES (E4M3 codes) or CODES_AND_FP8_CODES (both); absent: plain float values.
        self.handover: dict[int, str] = {}

    def covered(self, layer: Layer, fused: dict[int, Gelu]) -> list[Layer] | None:
        """The layers the INT8 step of ``layer`` covers (an INT8 GEMM's with the layers of its GELU
        from ``fused``), None where ``layer`` stays float."""
        if layer.kind == "convolution":
            if self.int8_gemm_source(layer) is None:
                return None
            gelu = fused.get(layer.index)
            return [layer] if gelu is None else [layer, *gelu.layers]
        plugin = layer.plugin
        if plugin is None or plugin.name not in (QKV, SKIP_LN):
            return None
        if plugin.definition.layout != INTERLEAVED and plugin.params.get("type_id") != int(DataType.INT8):
            return None
        io = [layer.inputs[0], layer.outputs[0]] if plugin.name == QKV else [*layer.inputs[:2], *layer.outputs]
        return None if self.scales(io) is None else [layer]

    def int8_gemm_source(self, layer: Layer) -> int | None:
        """The slot a convolution reads as an INT8 (FP8) GEMM; None where it stays a float layer."""
        source = layer.inputs[0]
        if source not in self.amax or not is_dense(layer):
            return None
        if self.strict and layer.precision in _FLOAT_PRECISIONS:
            return None
        return source

    def fast_int8_attention_source(self, layer: Layer) -> int | None:
        """The QKV slot of a QKV-to-context plugin that runs ``int8_steps.fast_int8_attention``."""
        plugin = layer.plugin
        if not self.fast or plugin is None or plugin.name != QKV or plugin.definition.layout == INTERLEAVED:
            return None
        if plugin.params.get("type_id") != int(DataType.INT8) or plugin.params.get("var_seqlen"):
            return None
        if self.scales([layer.inputs[0], layer.outputs[0]]) is None:
            return None
        return layer.inputs[0]

    def fast_int8_skip_layernorm(self, layer: Layer) -> bool:
        """Whether a layer is an ``-iln`` skip-LayerNorm that runs ``int8_steps.fast_int8_skip_layernorm``."""
        plugin = layer.plugin
        if not self.fast or plugin is None or plugin.name != SKIP_LN or plugin.definition.layout == INTERLEAVED:
            return False
        return plugin.params.get("type_id") == int(DataType.INT8) and len(layer.outputs) == 1 \
            and self.scales([*layer.inputs[:2], *layer.outputs]) is not None

    def plan_handovers(self, fused: dict[int, Gelu]) -> None:
        """Fill ``handover``: the codes that every reader of a tensor takes, where all of them are
        fast 8-bit layers and its producer can write them (an 8-bit GEMM, with its fused GELU;
        ``-imh`` attention's context; an ``-iln`` skip-LayerNorm): int8 codes for INT8 GEMMs,
        ``-iln`` skip-LayerNorms and ``-imh`` attention, E4M3 codes for FP8 GEMMs; both where an
        ``-iln`` skip-LayerNorm's output is read by FP8 GEMMs and by skip-LayerNorms."""
        if not self.fast:
            return
        graph = self.graph
        gemm_codes = FP8_CODES if self.fp8 else CODES

        def taken(slot: int, user: Layer) -> str | None:
            if user.kind == "convolution" and user.inputs == (slot,) and self.int8_gemm_source(user) == slot:
                return gemm_codes
            if (self.fast_int8_skip_layernorm(user) and slot in user.inputs[:2]) \
                    or self.fast_int8_attention_source(user) == slot:
                return CODES
            return None

        def wanted(slot: int, producer: Layer) -> str | None:
            users = graph.readers.get(slot, [])
            if slot in graph.outputs or not users:
                return None
            kinds = {taken(slot, u) for u in users}
            if kinds == {CODES, FP8_CODES} and self.fast_int8_skip_layernorm(producer):
                return CODES_AND_FP8_CODES
            return kinds.pop() if len(kinds) == 1 else None

        for layer in graph.layers:
            if layer.kind == "convolution" and self.int8_gemm_source(layer) is not None:
                gelu = fused.get(layer.index)
                result = layer.outputs[0] if gelu is None else gelu.output
            elif self.fast_int8_attention_source(layer) is not None or self.fast_int8_skip_layernorm(layer):
                result = layer.outputs[0]
            else:
                continue
            how = wanted(result, layer)
            if how is not None:
                self.handover[result] = how

    def handover_codes(self, slot: int) -> HandoverCodes | None:
        """The codes the producer of ``slot`` writes into it on CUDA; None: float values."""
        how = self.handover.get(slot)
        if how is None:
            return None
        if how == FP8_CODES:
            return self.fp8_copy_codes(slot)
        return HandoverCodes(torch.int8, q.scale_from_amax(self.amax[slot]))

    def fp8_copy_codes(self, slot: int) -> HandoverCodes:
        """The E4M3 codes an FP8 GEMM reading ``slot`` takes."""
        return HandoverCodes(torch.float8_e4m3fn, float(q.fp8_input_scale(self.amax[slot], "cpu")))

    def scales(self, slots: Sequence[int]) -> list[float] | None:
        if any(slot not in self.amax for slot in slots):
            return None
        return [q.scale_from_amax(self.amax[slot]) for slot in slots]

    def run_for(self, layer: Layer, gelu: Gelu | None = None) -> tuple[Run, str]:
        """The INT8 step of a layer ``covered`` takes, and its pattern (a convolution's followed by
        ``gelu`` when set)."""
        if layer.kind == "convolution":
            return self.convolution(layer, gelu)
        return self.plugin(layer)

    def float32(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(values, dtype=np.float32)).to(self.dev)

    # ---- GEMMs

    def convolution(self, layer: Layer, gelu: Gelu | None) -> tuple[Run, str]:
        p = layer.params
        result = layer.outputs[0] if gelu is None else gelu.output
        form = "tanh" if gelu is None else gelu.form
        source = layer.inputs[0]
        pattern = ("fp8_gemm" if self.fp8 else "int8_gemm") + ("" if gelu is None else "_gelu")
        weight = self.float32(p["kernel"]).reshape(p["num_output_maps"], -1)
        bias = None if p["bias"] is None else self.float32(p["bias"])
        out_dtype = TORCH_DTYPE[layer.output_dtypes[0]]
        spatial = len(p["kernel_shape"])
        if self.steps is not None:
            out_codes = self.handover_codes(result)
            fast = self.steps.fast_8bit_gemm(weight, bias, self.amax[source], self.fp8, gelu is not None, out_dtype,
                                             out_codes, form=form)
            return _channel_gemm(fast, spatial, stored_dtype(out_codes, out_dtype)), pattern
        gemm = fp8_gemm(weight, bias, self.amax[source]) if self.fp8 else int8_gemm(weight, bias, self.amax[source])
        run = _channel_gemm(gemm, spatial, out_dtype)
        return (run if gelu is None else _then_gelu(run, form)), pattern

    # ---- plugins

    def plugin(self, layer: Layer) -> tuple[Run, str]:
        assert layer.plugin is not None
        params, values = layer.plugin.params, layer.plugin.values
        interleaved = layer.plugin.definition.layout == INTERLEAVED
        out_types = [TORCH_DTYPE[t] for t in layer.output_dtypes]
        if layer.plugin.name == QKV:
            qkv_scale, ctx_scale = (q.scale_from_amax(self.amax[slot]) for slot in (layer.inputs[0], layer.outputs[0]))
            heads, dq_probs = params["num_heads"], float(params["dq_probs"])
            if interleaved:

                def attention(qkv: torch.Tensor, cu: torch.Tensor, dummy: torch.Tensor) -> Sequence[torch.Tensor]:
                    tokens = qkv_blocks_to_per_head(channels_last(qkv), heads)
                    ctx = q.int8_attention_varlen(tokens, cu, dummy.shape[0], heads, qkv_scale, ctx_scale, dq_probs)
                    return (channels_first(ctx).to(out_types[0]),)

                return attention, ATTENTION
            if params.get("var_seqlen"):

                def attention_packed(qkv: torch.Tensor, mask: torch.Tensor, cu: torch.Tensor, dummy: torch.Tensor) -> Sequence[torch.Tensor]:
                    ctx = q.int8_attention_varlen(qkv.flatten(1), cu, dummy.shape[0], heads, qkv_scale, ctx_scale, dq_probs)
                    return (ctx.unflatten(-1, (-1, 1, 1)).to(out_types[0]),)

                return attention_packed, ATTENTION
            has_mask = bool(params["has_mask"])
            if self.steps is not None:
                return self.steps.fast_int8_attention(heads, has_mask, qkv_scale, ctx_scale, dq_probs, out_types[0],
                                                      self.handover_codes(layer.outputs[0])), ATTENTION

            def attention_fixed(qkv: torch.Tensor, mask: torch.Tensor | None = None) -> Sequence[torch.Tensor]:
                mask_idx = mask[:, 0] if has_mask and mask is not None else None
                ctx = q.int8_attention(qkv.flatten(2), mask_idx, heads, qkv_scale, ctx_scale, dq_probs)
                return (ctx.unflatten(-1, (-1, 1, 1)).to(out_types[0]),)

            return attention_fixed, ATTENTION

        # skip-LayerNorm: INT8 input, skip and output(s)
        scales = [q.scale_from_amax(self.amax[slot]) for slot in (*layer.inputs[:2], *layer.outputs)]
        x_scale, skip_scale, out_scale = scales[:3]
        sum_scale = scales[3] if len(scales) > 3 else None
        gamma, beta = self.float32(values["gamma"]).ravel(), self.float32(values["beta"]).ravel()
        bias = self.float32(values["bias"]).ravel() if "bias" in values else None
        eps = ops.skip_layernorm_eps(gamma.numel(), torch.int8)
        if self.steps is not None and self.fast_int8_skip_layernorm(layer):
            out = layer.outputs[0]
            fp8_copy = self.fp8_copy_codes(out) if self.handover.get(out) == CODES_AND_FP8_CODES else None
            return self.steps.fast_int8_skip_layernorm(gamma, beta, bias, x_scale, skip_scale, out_scale, eps,
                                                       out_types[0], self.handover_codes(out), fp8_copy), SKIP_LAYERNORM

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

        return skip_layernorm, SKIP_LAYERNORM


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
