"""Test helpers: a tiny BERT built by hand through the TensorRT API, and the same math in torch.

The network follows docs/SPEC.md "Layer graph" (fixed length) and "Packed path" (varseqlen); the
reference is written independently from the engine: separate Q/K/V weights, an explicit boolean
attention mask, the textbook GELU and LayerNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

GELU_CONSTANTS = (0.044715, 0.79788456080286535587989211986876, 1.0, 0.5)
# The float fields of the embedding plugins, in the order the networks pass them (docs/SPEC.md "Embedding plugin").
EMB_FIELD_NAMES = (
    "bert_embeddings_layernorm_beta",
    "bert_embeddings_layernorm_gamma",
    "bert_embeddings_word_embeddings",
    "bert_embeddings_token_type_embeddings",
    "bert_embeddings_position_embeddings",
)


@dataclass
class TinyConfig:
    hidden: int
    heads: int
    intermediate: int
    layers: int
    vocab: int = 50
    types: int = 2
    max_positions: int = 64

    @property
    def head_size(self) -> int:
        return self.hidden // self.heads


def random_weights(cfg: TinyConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Raw weights in the demo's names (docs/SPEC.md "Weight dictionary"), with Q/K/V still separate
    (``l{i}_attention_self_*``)."""
    rng = np.random.default_rng(seed)
    E, I = cfg.hidden, cfg.intermediate

    def mat(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) / math.sqrt(inp)).astype(np.float32)

    def vec(n: int, scale: float = 0.1, center: float = 0.0) -> np.ndarray:
        return (center + scale * rng.standard_normal(n)).astype(np.float32)

    w = {
        "bert_embeddings_word_embeddings": vec(cfg.vocab * E, 1.0).reshape(cfg.vocab, E),
        "bert_embeddings_token_type_embeddings": vec(cfg.types * E, 1.0).reshape(cfg.types, E),
        "bert_embeddings_position_embeddings": vec(cfg.max_positions * E, 1.0).reshape(cfg.max_positions, E),
        "bert_embeddings_layernorm_gamma": vec(E, 0.1, 1.0),
        "bert_embeddings_layernorm_beta": vec(E),
        "cls_squad_output_weights": mat(2, E),
        "cls_squad_output_bias": vec(2),
    }
    for i in range(cfg.layers):
        p = f"l{i}_"
        for name in ("query", "key", "value"):
            w[p + f"attention_self_{name}_kernel"] = mat(E, E)
            w[p + f"attention_self_{name}_bias"] = vec(E)
        w[p + "attention_output_dense_kernel"] = mat(E, E)
        w[p + "attention_output_dense_bias"] = vec(E)
        w[p + "attention_output_layernorm_gamma"] = vec(E, 0.1, 1.0)
        w[p + "attention_output_layernorm_beta"] = vec(E)
        w[p + "intermediate_dense_kernel"] = mat(I, E)
        w[p + "intermediate_dense_bias"] = vec(I)
        w[p + "output_dense_kernel"] = mat(E, I)
        w[p + "output_dense_bias"] = vec(E)
        w[p + "output_layernorm_gamma"] = vec(E, 0.1, 1.0)
        w[p + "output_layernorm_beta"] = vec(E)
    return w


def packed_qkv(w: dict[str, np.ndarray], cfg: TinyConfig, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """docs/SPEC.md "QKV packing": stack Q/K/V, reorder output channels to [head][q|k|v][h]."""
    N, H, E = cfg.heads, cfg.head_size, cfg.hidden
    p = f"l{layer}_attention_self_"
    kernel = np.stack([w[p + n + "_kernel"] for n in ("query", "key", "value")])
    bias = np.stack([w[p + n + "_bias"] for n in ("query", "key", "value")])
    kernel = kernel.reshape(3, N, H, N, H).transpose(1, 0, 2, 3, 4).reshape(3 * E, E)
    bias = bias.reshape(3, N, H).transpose(1, 0, 2).reshape(3 * E)
    return np.ascontiguousarray(kernel), np.ascontiguousarray(bias)


# ----------------------------------------------------------------------------------------------
# Network construction through the TensorRT API (fixed length, docs/SPEC.md "Layer graph")


def plugin_field(trt: Any, name: str, value: Any, kind: str) -> Any:
    if kind == "f":
        return trt.PluginField(name, np.ascontiguousarray(value, dtype=np.float32).ravel(), trt.PluginFieldType.FLOAT32)
    return trt.PluginField(name, np.array([value], dtype=np.int32), trt.PluginFieldType.INT32)


def create_plugin(trt: Any, name: str, version: str, instance: str, fields: list[Any], v3: bool) -> Any:
    creator = trt.get_plugin_registry().get_creator(name, version, "")
    assert creator is not None, f"{name} v{version} not registered"
    pfc = trt.PluginFieldCollection(fields)
    if v3:
        return creator.create_plugin(instance, pfc, trt.TensorRTPhase.BUILD)
    return creator.create_plugin(instance, pfc)


def add_plugin(trt: Any, network: Any, inputs: list[Any], plugin: Any, v3: bool) -> Any:
    return network.add_plugin_v3(inputs, [], plugin) if v3 else network.add_plugin_v2(inputs, plugin)


def add_dense(trt: Any, network: Any, x: Any, kernel: np.ndarray, bias: np.ndarray) -> Any:
    return network.add_convolution_nd(x, kernel.shape[0], (1, 1), trt.Weights(kernel), trt.Weights(bias))


def add_gelu(trt: Any, network: Any, x: Any, rank: int, fp32_constants: bool = False) -> Any:
    def const(value: float) -> Any:
        layer = network.add_constant((1,) * rank, trt.Weights(np.array([value], dtype=np.float32)))
        if fp32_constants:
            layer.precision = trt.float32
        return layer.get_output(0)

    coeff, sqrt_2_pi, one, half = GELU_CONSTANTS
    ew = trt.ElementWiseOperation
    x3 = network.add_elementwise(x, const(3.0), ew.POW).get_output(0)
    t = network.add_elementwise(x, network.add_elementwise(x3, const(coeff), ew.PROD).get_output(0), ew.SUM)
    u = network.add_elementwise(t.get_output(0), const(sqrt_2_pi), ew.PROD)
    tanh = network.add_activation(u.get_output(0), trt.ActivationType.TANH)
    plus = network.add_elementwise(tanh.get_output(0), const(one), ew.SUM)
    halfp = network.add_elementwise(plus.get_output(0), const(half), ew.PROD)
    return network.add_elementwise(halfp.get_output(0), x, ew.PROD)


def build_fixed_network(
    trt: Any,
    builder: Any,
    w: dict[str, np.ndarray],
    cfg: TinyConfig,
    batch_sizes: list[int],
    seq_lens: list[int],
    fp16: bool = False,
    v3: bool = False,
) -> tuple[Any, Any]:
    """(network, config) exactly as the demo's builder.py lays them out."""
    network = builder.create_network(0)
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    B = -1 if len(batch_sizes) > 1 else batch_sizes[0]
    S = -1 if len(seq_lens) > 1 else seq_lens[0]
    names = ("input_ids", "segment_ids", "input_mask")
    inputs = [network.add_input(n, trt.int32, (B, S)) for n in names]
    if len(batch_sizes) > 1 or len(seq_lens) > 1:
        for b in sorted(batch_sizes):
            for s in sorted(seq_lens):
                profile = builder.create_optimization_profile()
                for n in names:
                    profile.set_shape(n, (1, s), (b, s), (b, s))
                config.add_optimization_profile(profile)
    transposed = []
    for x in inputs:
        shuffle = network.add_shuffle(x)
        shuffle.second_transpose = (1, 0)
        transposed.append(shuffle.get_output(0))

    dt = 1 if fp16 else 0
    emb_fields = [plugin_field(trt, n, w[n], "f") for n in EMB_FIELD_NAMES]
    emb_fields += [plugin_field(trt, "output_fp16", int(fp16), "i"), plugin_field(trt, "mha_type_id", dt, "i")]
    emb = create_plugin(trt, "CustomEmbLayerNormPluginDynamic", "6" if v3 else "1", "emb_layer_norm", emb_fields, v3)
    emb_layer = add_plugin(trt, network, transposed, emb, v3)
    emb_layer.get_output(0).name = "embeddings_output"
    x = emb_layer.get_output(0)
    mask_idx = emb_layer.get_output(1)

    for i in range(cfg.layers):
        p = f"l{i}_"
        kernel, bias = packed_qkv(w, cfg, i)
        qkv = add_dense(trt, network, x, kernel, bias)
        qkv.get_output(0).name = p + "attention_qkv_mult"
        qkv_fields = [
            plugin_field(trt, "type_id", dt, "i"),
            plugin_field(trt, "hidden_size", cfg.hidden, "i"),
            plugin_field(trt, "num_heads", cfg.heads, "i"),
            plugin_field(trt, "has_mask", 1, "i"),
        ]
        att = create_plugin(trt, "CustomQKVToContextPluginDynamic", "4" if v3 else "1", "qkv_to_context", qkv_fields, v3)
        ctx = add_plugin(trt, network, [qkv.get_output(0), mask_idx], att, v3)
        ctx.get_output(0).name = p + "attention_context_layer"
        aout = add_dense(trt, network, ctx.get_output(0), w[p + "attention_output_dense_kernel"], w[p + "attention_output_dense_bias"])
        ln1 = skip_ln(trt, network, aout.get_output(0), x, w, p + "attention_output_layernorm_", cfg.hidden, dt, v3)
        mid = add_dense(trt, network, ln1.get_output(0), w[p + "intermediate_dense_kernel"], w[p + "intermediate_dense_bias"])
        gelu = add_gelu(trt, network, mid.get_output(0), 5)
        gelu.get_output(0).name = p + "gelu"
        out = add_dense(trt, network, gelu.get_output(0), w[p + "output_dense_kernel"], w[p + "output_dense_bias"])
        out.get_output(0).name = p + "output_dense"
        ln2 = skip_ln(trt, network, out.get_output(0), ln1.get_output(0), w, p + "output_layernorm_", cfg.hidden, dt, v3)
        ln2.get_output(0).name = p + "output_reshape"
        x = ln2.get_output(0)

    head = add_dense(trt, network, x, w["cls_squad_output_weights"], w["cls_squad_output_bias"])
    shuffle = network.add_shuffle(head.get_output(0))
    shuffle.second_transpose = (1, 0, 2, 3, 4)
    logits = shuffle.get_output(0)
    logits.name = "logits_out"
    network.mark_output(logits)
    return network, config


def skip_ln(trt: Any, network: Any, x: Any, skip: Any, w: dict[str, np.ndarray], prefix: str, hidden: int, dt: int, v3: bool) -> Any:
    fields = [
        plugin_field(trt, "ld", hidden, "i"),
        plugin_field(trt, "type_id", dt, "i"),
        plugin_field(trt, "beta", w[prefix + "beta"], "f"),
        plugin_field(trt, "gamma", w[prefix + "gamma"], "f"),
    ]
    plugin = create_plugin(trt, "CustomSkipLayerNormPluginDynamic", "5" if v3 else "1", "skip_layer_norm", fields, v3)
    return add_plugin(trt, network, [x, skip], plugin, v3)


def build_varseqlen_network(
    trt: Any, builder: Any, w: dict[str, np.ndarray], cfg: TinyConfig, batch_sizes: list[int], max_seq: int, v3: bool = False
) -> tuple[Any, Any]:
    """The non-interleaved packed network (docs/SPEC.md "Packed path") in FP16 (var_seqlen needs FP16 or INT8)."""
    network = builder.create_network(0)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    ids, segs, cu, dummy = (network.add_input(n, trt.int32, (-1,)) for n in ("input_ids", "segment_ids", "cu_seqlens", "max_seqlen"))
    for b in batch_sizes:
        profile = builder.create_optimization_profile()
        profile.set_shape("input_ids", (1,), (max_seq * b,), (max_seq * b,))
        profile.set_shape("segment_ids", (1,), (max_seq * b,), (max_seq * b,))
        profile.set_shape("cu_seqlens", (1,), (b + 1,), (b + 1,))
        profile.set_shape("max_seqlen", (1,), (max_seq,), (max_seq,))
        config.add_optimization_profile(profile)
    emb_fields = [plugin_field(trt, n, w[n], "f") for n in EMB_FIELD_NAMES] + [plugin_field(trt, "output_fp16", 1, "i")]
    emb = create_plugin(trt, "CustomEmbLayerNormPluginDynamic", "4" if v3 else "2", "emb_layer_norm_huggingface", emb_fields, v3)
    emb_layer = add_plugin(trt, network, [ids, segs, cu, dummy], emb, v3)
    x, mask_idx = emb_layer.get_output(0), emb_layer.get_output(1)
    for i in range(cfg.layers):
        p = f"l{i}_"
        kernel, bias = packed_qkv(w, cfg, i)
        qkv = add_dense(trt, network, x, kernel, bias)
        fields = [
            plugin_field(trt, "hidden_size", cfg.hidden, "i"),
            plugin_field(trt, "num_heads", cfg.heads, "i"),
            plugin_field(trt, "has_mask", 1, "i"),
            plugin_field(trt, "type_id", 1, "i"),
            # the demo's quirk (docs/SPEC.md "Quirks kept on purpose"): an int32 value tagged FLOAT32
            trt.PluginField("var_seqlen", np.array([1], dtype=np.int32), trt.PluginFieldType.FLOAT32),
        ]
        att = create_plugin(trt, "CustomQKVToContextPluginDynamic", "5" if v3 else "2", "qkv_to_context_varseqlen", fields, v3)
        ctx = add_plugin(trt, network, [qkv.get_output(0), mask_idx, cu, dummy], att, v3)
        aout = add_dense(trt, network, ctx.get_output(0), w[p + "attention_output_dense_kernel"], w[p + "attention_output_dense_bias"])
        ln1 = skip_ln_varseqlen(trt, network, aout.get_output(0), x, w, p + "attention_output_layernorm_", cfg.hidden, v3)
        mid = add_dense(trt, network, ln1.get_output(0), w[p + "intermediate_dense_kernel"], w[p + "intermediate_dense_bias"])
        gelu = add_gelu(trt, network, mid.get_output(0), 4, fp32_constants=True)
        out = add_dense(trt, network, gelu.get_output(0), w[p + "output_dense_kernel"], w[p + "output_dense_bias"])
        x = skip_ln_varseqlen(trt, network, out.get_output(0), ln1.get_output(0), w, p + "output_layernorm_", cfg.hidden, v3).get_output(0)
    head = add_dense(trt, network, x, w["cls_squad_output_weights"], w["cls_squad_output_bias"])
    shuffle = network.add_shuffle(head.get_output(0))
    shuffle.second_transpose = (1, 0, 2, 3)
    shuffle.get_output(0).name = "logits_out"
    network.mark_output(shuffle.get_output(0))
    return network, config


def skip_ln_varseqlen(trt: Any, network: Any, x: Any, skip: Any, w: dict[str, np.ndarray], prefix: str, hidden: int, v3: bool) -> Any:
    fields = [
        plugin_field(trt, "ld", hidden, "i"),  # sent by the demo although v2 does not declare it
        plugin_field(trt, "beta", w[prefix + "beta"], "f"),
        plugin_field(trt, "gamma", w[prefix + "gamma"], "f"),
        plugin_field(trt, "type_id", 1, "i"),
    ]
    plugin = create_plugin(trt, "CustomSkipLayerNormPluginDynamic", "6" if v3 else "2", "skip_layer_norm_varseqlen", fields, v3)
    return add_plugin(trt, network, [x, skip], plugin, v3)


# ----------------------------------------------------------------------------------------------
# Independent reference


def _layernorm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * gamma + beta


def reference_logits(w: dict[str, np.ndarray], cfg: TinyConfig, ids: np.ndarray, segs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[B, S, 2] start/end logits of BERT-for-QA in float64; ``mask`` [B, S] of 1…10…0 rows."""
    t = {k: torch.from_numpy(v).double() for k, v in w.items()}
    B, S = ids.shape
    E, N, H = cfg.hidden, cfg.heads, cfg.head_size
    ln_eps = float(np.finfo(np.float32).eps) if E in (768, 1024) else 0.0
    x = (
        t["bert_embeddings_word_embeddings"][torch.from_numpy(ids).long()]
        + t["bert_embeddings_token_type_embeddings"][torch.from_numpy(segs).long()]
        + t["bert_embeddings_position_embeddings"][:S].unsqueeze(0)
    )
    x = _layernorm(x, t["bert_embeddings_layernorm_gamma"], t["bert_embeddings_layernorm_beta"], 0.0)
    keep = torch.from_numpy(mask).bool().view(B, 1, 1, S)
    for i in range(cfg.layers):
        p = f"l{i}_"

        def dense(v: torch.Tensor, name: str) -> torch.Tensor:
            return v @ t[p + name + "_kernel"].T + t[p + name + "_bias"]

        q, k, v = (dense(x, f"attention_self_{n}").view(B, S, N, H).transpose(1, 2) for n in ("query", "key", "value"))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(H)
        probs = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
        ctx = (probs @ v).transpose(1, 2).reshape(B, S, E)
        x = _layernorm(dense(ctx, "attention_output_dense") + x, t[p + "attention_output_layernorm_gamma"], t[p + "attention_output_layernorm_beta"], ln_eps)
        h = dense(x, "intermediate_dense")
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        x = _layernorm(dense(h, "output_dense") + x, t[p + "output_layernorm_gamma"], t[p + "output_layernorm_beta"], ln_eps)
    return (x @ t["cls_squad_output_weights"].T + t["cls_squad_output_bias"]).numpy()


def random_batch(cfg: TinyConfig, batch: int, seq: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int32 ids, segments and a padded mask (each row keeps a random number ≥ 1 of leading tokens)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab, (batch, seq)).astype(np.int32)
    segs = rng.integers(0, cfg.types, (batch, seq)).astype(np.int32)
    lengths = rng.integers(1, seq + 1, batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    return ids, segs, mask


def run_engine(trt: Any, engine: Any, feeds: dict[str, np.ndarray], device: torch.device, profile: int = 0) -> dict[str, np.ndarray]:
    """Run one inference the way the demo's runner does: set shapes, bind data_ptr()s, execute_async_v3."""
    context = engine.create_execution_context()
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    assert context.set_optimization_profile_async(profile, stream)
    buffers = {}
    for name, value in feeds.items():
        assert context.set_input_shape(name, value.shape), name
        buffers[name] = torch.from_numpy(value).to(device)
    assert context.infer_shapes() == []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            shape = tuple(context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        assert context.set_tensor_address(name, buffers[name].data_ptr())
    assert context.execute_async_v3(stream)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {n: b.cpu().numpy() for n, b in buffers.items() if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}


# ----------------------------------------------------------------------------------------------
# Test plumbing shared by the portable-engine tests


def devices() -> list[Any]:
    """CPU always; CUDA when PyTorch sees a GPU (skipped with the reason otherwise)."""
    import pytest

    cuda = pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available to PyTorch"),
    )
    return ["cpu", cuda]


class RecordingLogger:
    """A TensorRT ILogger subclass keeping every message, built for whichever module is ``trt``."""

    def __new__(cls, trt: Any) -> Any:
        class _Recorder(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.records: list[tuple[Any, str]] = []

            def log(self, severity: Any, msg: str) -> None:
                self.records.append((severity, msg))

            def messages(self, severity: Any) -> list[str]:
                return [m for s, m in self.records if s == severity]

        return _Recorder()
