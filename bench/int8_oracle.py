"""The float64 fake-quantization oracle of bench/int8_accuracy.py: HuggingFace's BERT with TensorRT's
INT8 arithmetic (quantize → dequantize) at the tensors an INT8 engine quantizes, with the ranges read
off that engine's description.  It shares no code with the portable engine, so the engine's INT8
logits can be checked against it tensor kind by tensor kind."""

from __future__ import annotations

import copy

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

if TYPE_CHECKING:
    from bench.int8_accuracy import Features

# The tensors TensorRT's INT8 engine quantizes, by kind (the oracle quantizes any subset): the input
# of each GEMM, with its weights per output channel (every INT8 build); ``qkv_output`` (Q, K and V)
# and ``probabilities`` (the softmax on the grid of step ``dq_probs``), which with ``context`` make
# ``-imh`` attention; ``skip_ln``: both inputs and the output of every skip-LayerNorm (``-iln``);
# ``weights``: every GEMM's weights alone.
GEMM_INPUTS = ("qkv_input", "context", "fc1_input", "gelu", "head_input")
QUANTIZED_KINDS = (*GEMM_INPUTS, "qkv_output", "probabilities", "skip_ln", "weights")


def engine_kinds(imh: bool = False, iln: bool = False) -> tuple[str, ...]:
    """The kinds a ``builder.py -i`` engine (with ``-imh`` / ``-iln``) quantizes."""
    return (*GEMM_INPUTS, *(("qkv_output", "probabilities") if imh else ()), *(("skip_ln",) if iln else ()))


def engine_ranges(description: dict) -> list[dict[str, float]]:
    """Per encoder layer, the amax of each tensor the oracle quantizes (NaN where the engine has no
    range), read off an INT8 engine's description by position in the graph: four convolutions and
    one attention plugin per layer, then the head's convolution, whose input is the last layer's
    ``layer_output``.  Positions, not names: most of these tensors are unnamed."""
    tensors = description["tensors"]

    def amax(slot: int) -> float:
        dynamic_range = tensors[slot]["dynamic_range"]
        return float("nan") if dynamic_range is None else abs(float(dynamic_range[1]))

    layers = description["layers"]
    convs = [layer for layer in layers if layer["kind"] == "convolution"]
    attention = [layer for layer in layers if layer["kind"] == "plugin" and "QKVToContext" in layer["params"]["plugin"]]
    per_layer = []
    for i, plugin in enumerate(attention):
        qkv, out, fc1, fc2 = convs[4 * i : 4 * i + 4]
        fields = {name: data for name, _, data in plugin["params"]["fields"]}
        # PTQ builds send no dq_probs: the plugin's INT8 default is 1/127 (docs/SPEC.md "Attention plugin").
        dq_probs = float(np.asarray(fields["dq_probs"]).ravel()[0]) if "dq_probs" in fields else 1.0 / 127.0
        per_layer.append({
            "qkv_input": amax(qkv["inputs"][0]),
            "qkv_output": amax(qkv["outputs"][0]),
            "context": amax(out["inputs"][0]),
            "attention_dense_output": amax(out["outputs"][0]),
            "fc1_input": amax(fc1["inputs"][0]),
            "gelu": amax(fc2["inputs"][0]),
            "output_dense_output": amax(fc2["outputs"][0]),
            "layer_output": amax(convs[4 * i + 4]["inputs"][0]),
            "dq_probs": dq_probs,
        })
    return per_layer


def fake_quantize(x: torch.Tensor, amax: float) -> torch.Tensor:
    """Symmetric per-tensor INT8: round half to even of x / (amax / 127), saturated to [-128, 127]."""
    step = amax / 127.0
    return torch.clamp(torch.round(x / step), -128, 127) * step


def _quantize_weights(linear: torch.nn.Linear) -> None:
    with torch.no_grad():
        w = linear.weight
        step = w.abs().amax(1, keepdim=True).clamp_min(1e-30) / 127.0
        w.copy_(torch.clamp(torch.round(w / step), -127, 127) * step)


# HF attention implementation name of the oracle's ``probabilities`` kind.
INT8_PROBABILITIES_ATTENTION = "demobert_int8_probabilities"


def _int8_probabilities_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF's eager attention with the probabilities on the fused INT8 kernel's grid (step
    ``module.dq_probs``, codes 0..127)."""
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.size(-1) ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    probs = torch.clamp(torch.round(probs / module.dq_probs), 0, 127) * module.dq_probs
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def hf_int8_oracle(model, features: Features, ranges: Sequence[dict[str, float]], kinds: Sequence[str] = QUANTIZED_KINDS) -> np.ndarray:
    """Logits ``[n, S, 2]`` of a float64 copy of the HF model with TensorRT's INT8 arithmetic as fake
    quantization (quantize → dequantize) at the tensors of ``kinds``, with the ``ranges`` of
    ``engine_ranges``; float everywhere else.  Independent of the engine: HF's modules, hooks only."""
    unknown = set(kinds) - set(QUANTIZED_KINDS)
    if unknown:
        raise ValueError(f"unknown quantized tensor kinds {sorted(unknown)}")
    oracle = copy.deepcopy(model).double().eval()
    hooks_on = set(kinds)

    def quantize_input(linear: torch.nn.Linear, amax: float) -> None:
        _quantize_weights(linear)
        linear.register_forward_pre_hook(lambda module, args: (fake_quantize(args[0], amax), *args[1:]))

    def quantize_output(module: torch.nn.Module, amax: float) -> None:
        def hook(mod, args, out):
            if isinstance(out, tuple):
                return (fake_quantize(out[0], amax), *out[1:])
            return fake_quantize(out, amax)

        module.register_forward_hook(hook)

    encoder = oracle.bert.encoder.layer
    if "weights" in hooks_on:
        for module in oracle.modules():
            if isinstance(module, torch.nn.Linear):
                _quantize_weights(module)
    for layer, r in zip(encoder, ranges):
        attention = layer.attention
        if "qkv_input" in hooks_on:
            for projection in (attention.self.query, attention.self.key, attention.self.value):
                quantize_input(projection, r["qkv_input"])
        if "context" in hooks_on:
            quantize_input(attention.output.dense, r["context"])
        if "fc1_input" in hooks_on:
            quantize_input(layer.intermediate.dense, r["fc1_input"])
        if "gelu" in hooks_on:
            quantize_input(layer.output.dense, r["gelu"])
        attention.self.dq_probs = r["dq_probs"]
        if "qkv_output" in hooks_on:
            for projection in (attention.self.query, attention.self.key, attention.self.value):
                quantize_output(projection, r["qkv_output"])
        if "skip_ln" in hooks_on:
            # LN(dense(x) + skip): the dense output and the skip each on their own grid, then the LN output.
            quantize_output(attention.output.dense, r["attention_dense_output"])
            attention.output.register_forward_pre_hook(
                lambda module, args, amax=r["qkv_input"]: (args[0], fake_quantize(args[1], amax)))
            quantize_output(attention.output.LayerNorm, r["fc1_input"])
            quantize_output(layer.output.dense, r["output_dense_output"])
            layer.output.register_forward_pre_hook(
                lambda module, args, amax=r["fc1_input"]: (args[0], fake_quantize(args[1], amax)))
            quantize_output(layer.output.LayerNorm, r["layer_output"])
    if "head_input" in hooks_on:
        quantize_input(oracle.qa_outputs, ranges[-1]["layer_output"])
    if "probabilities" in hooks_on:
        # The padding mask HF builds for an implementation is the one registered under its name.
        AttentionInterface.register(INT8_PROBABILITIES_ATTENTION, _int8_probabilities_attention)
        AttentionMaskInterface.register(INT8_PROBABILITIES_ATTENTION, eager_mask)
        oracle.config._attn_implementation = INT8_PROBABILITIES_ATTENTION
    else:
        oracle.config._attn_implementation = "eager"
    with torch.no_grad():
        out = oracle(
            input_ids=torch.as_tensor(features.input_ids, dtype=torch.long),
            token_type_ids=torch.as_tensor(features.segment_ids, dtype=torch.long),
            attention_mask=torch.as_tensor(features.input_mask, dtype=torch.long),
        )
    return torch.stack([out.start_logits, out.end_logits], dim=-1).numpy()
