"""The BERT plugins of the portable engine: creator field validation (docs/SPEC.md "Plugins") and math.

Each plugin runs alone in a one-layer network through the public API and is compared with a
hand-written torch computation of the plugins' formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import helpers.portable as trt

EMB, QKV, SKIP = "CustomEmbLayerNormPluginDynamic", "CustomQKVToContextPluginDynamic", "CustomSkipLayerNormPluginDynamic"
F32, I32 = trt.PluginFieldType.FLOAT32, trt.PluginFieldType.INT32
V3_VERSIONS = {(EMB, "4"), (EMB, "5"), (EMB, "6"), (QKV, "4"), (QKV, "5"), (SKIP, "5"), (SKIP, "6")}


def f32(name, values):
    return trt.PluginField(name, np.asarray(values, dtype=np.float32).ravel(), F32)


def i32(name, value):
    return trt.PluginField(name, np.array([value], dtype=np.int32), I32)


def create(name, version, fields):
    creator = trt.get_plugin_registry().get_creator(name, version, "")
    assert creator is not None
    pfc = trt.PluginFieldCollection(fields)
    if (name, version) in V3_VERSIONS:
        return creator.create_plugin("p", pfc, trt.TensorRTPhase.BUILD)
    return creator.create_plugin("p", pfc)


def emb_fields(E=8, vocab=11, types=2, positions=40, seed=0, **ints):
    rng = np.random.default_rng(seed)
    tables = {
        "bert_embeddings_layernorm_beta": rng.standard_normal(E) * 0.1,
        "bert_embeddings_layernorm_gamma": 1 + rng.standard_normal(E) * 0.1,
        "bert_embeddings_word_embeddings": rng.standard_normal((vocab, E)),
        "bert_embeddings_token_type_embeddings": rng.standard_normal((types, E)),
        "bert_embeddings_position_embeddings": rng.standard_normal((positions, E)),
    }
    fields = [f32(k, v) for k, v in tables.items()] + [i32(k, v) for k, v in ints.items()]
    return fields, {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in tables.items()}


def qkv_fields(type_id=0, E=12, N=3, has_mask=1, **extra):
    fields = [i32("type_id", type_id), i32("hidden_size", E), i32("num_heads", N), i32("has_mask", has_mask)]
    return fields + [i32(k, v) for k, v in extra.items()]


def skip_fields(E=8, type_id=0, with_ld=True, bias=None, seed=0):
    rng = np.random.default_rng(seed)
    beta, gamma = rng.standard_normal(E) * 0.1, 1 + rng.standard_normal(E) * 0.1
    fields = ([i32("ld", E)] if with_ld else []) + [i32("type_id", type_id), f32("beta", beta), f32("gamma", gamma)]
    if bias is not None:
        fields.append(f32("bias", bias))
    return fields, torch.from_numpy(beta.astype(np.float32)), torch.from_numpy(gamma.astype(np.float32))


def run_plugin(logger, device, name, version, fields, inputs, fp16=False):
    """Build a network holding only this plugin (all outputs marked) and run it once."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    tensors = []
    for i, value in enumerate(inputs):
        dtype = {np.dtype(np.int32): trt.int32, np.dtype(np.float16): trt.float16}.get(value.dtype, trt.float32)
        tensors.append(network.add_input(f"in{i}", dtype, value.shape))
    plugin = create(name, version, fields)
    assert plugin is not None, logger.messages(trt.Logger.ERROR)
    layer = network.add_plugin_v3(tensors, [], plugin) if (name, version) in V3_VERSIONS else network.add_plugin_v2(tensors, plugin)
    for i in range(layer.num_outputs):
        layer.get_output(i).name = f"out{i}"
        network.mark_output(layer.get_output(i))
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, logger.messages(trt.Logger.ERROR)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    buffers = [torch.from_numpy(v).to(device) for v in inputs]
    for i in range(layer.num_outputs):
        dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(f"out{i}")))).dtype
        buffers.append(torch.empty(tuple(context.get_tensor_shape(f"out{i}")), dtype=dtype, device=device))
    for i in range(engine.num_io_tensors):
        assert context.set_tensor_address(engine.get_tensor_name(i), buffers[i].data_ptr())
    assert context.execute_async_v3(0 if device.type == "cpu" else torch.cuda.current_stream(device).cuda_stream)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return [b.cpu() for b in buffers[len(inputs):]]


def layernorm(x, gamma, beta, eps):
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * gamma.double() + beta.double()


# ----------------------------------------------------------------------------------------------
# Field validation


REQUIRED = [
    (EMB, "1", "bert_embeddings_word_embeddings"),
    (EMB, "6", "bert_embeddings_layernorm_gamma"),
    (EMB, "2", "bert_embeddings_position_embeddings"),
    (QKV, "1", "num_heads"),
    (QKV, "4", "type_id"),
    (QKV, "2", "hidden_size"),
    (QKV, "5", "has_mask"),
    (SKIP, "1", "ld"),
    (SKIP, "5", "gamma"),
    (SKIP, "2", "beta"),
    (SKIP, "6", "type_id"),
]


def _complete_fields(name, version):
    if name == EMB:
        return emb_fields(output_fp16=0)[0]
    if name == QKV:
        return qkv_fields(type_id=1)
    return skip_fields(with_ld=version in ("1", "5"))[0]


@pytest.mark.parametrize("name,version,missing", REQUIRED)
def test_a_missing_required_field_is_named(logger, name, version, missing):
    fields = _complete_fields(name, version)
    assert create(name, version, fields) is not None
    assert create(name, version, [f for f in fields if f.name != missing]) is None
    error = logger.messages(trt.Logger.ERROR)[-1]
    assert f"'{missing}'" in error and "missing" in error and name in error


def test_a_wrongly_typed_field_is_refused(logger):
    fields = [trt.PluginField("type_id", np.array([1.0], np.float32), F32)] + qkv_fields()[1:]
    assert create(QKV, "1", fields) is None
    assert "'type_id' must be PluginFieldType.INT32, got PluginFieldType.FLOAT32" in logger.messages(trt.Logger.ERROR)[-1]
    beta64 = trt.PluginField("beta", np.zeros(8, np.float64), F32)
    fields = [f if f.name != "beta" else beta64 for f in skip_fields()[0]]
    assert create(SKIP, "1", fields) is None
    assert "float64" in logger.messages(trt.Logger.ERROR)[-1]


def test_var_seqlen_tagged_float32_is_read_as_int32(logger):
    """The demo sends var_seqlen as an int32 array tagged FLOAT32; the plugin accepts it."""
    tagged = trt.PluginField("var_seqlen", np.array([1], np.int32), F32)
    plugin = create(QKV, "2", qkv_fields(type_id=1) + [tagged])
    assert plugin is not None and plugin.plugin_version == "2" and plugin.plugin_type == QKV
    # A float 1.0 is not the int32 1 once its bits are read as int32.
    bad = trt.PluginField("var_seqlen", np.array([1.0], np.float32), F32)
    assert create(QKV, "2", qkv_fields(type_id=1) + [bad]) is None
    assert "var_seqlen" in logger.messages(trt.Logger.ERROR)[-1]


def test_field_values_and_counts_are_checked(logger):
    assert create(QKV, "1", qkv_fields(E=12, N=5)) is None  # 12 is not a multiple of 5 heads
    assert create(QKV, "1", qkv_fields(has_mask=2)) is None
    assert create(QKV, "1", qkv_fields(type_id=7)) is None
    two_heads = trt.PluginField("num_heads", np.array([3, 3], np.int32), I32)
    assert create(QKV, "1", [f if f.name != "num_heads" else two_heads for f in qkv_fields()]) is None
    assert "1 value(s), got 2" in logger.messages(trt.Logger.ERROR)[-1]
    fields, _, _ = skip_fields(E=8)
    assert create(SKIP, "1", [f if f.name != "ld" else i32("ld", 6) for f in fields]) is None
    assert create(SKIP, "1", fields + [f32("bias", np.zeros(5))]) is None
    emb, _ = emb_fields(E=8)
    short_word = f32("bert_embeddings_word_embeddings", np.zeros(8 * 3 + 1))
    assert create(EMB, "1", [f if f.name != short_word.name else short_word for f in emb]) is None


def test_undeclared_fields_are_ignored(logger):
    # The demo passes `ld` to skipLN v2, which does not declare it.
    fields, _, _ = skip_fields(with_ld=True)
    assert create(SKIP, "2", fields) is not None
    assert create(SKIP, "1", fields + [i32("not_a_field", 3)]) is not None


def test_creators_and_registry(logger):
    registry = trt.get_plugin_registry()
    v2 = registry.get_creator(SKIP, "1", "")
    v3 = registry.get_creator(SKIP, "5", "")
    assert isinstance(v2, trt.IPluginCreator) and isinstance(v3, trt.IPluginCreatorV3One)
    assert registry.get_plugin_creator(SKIP, "5", "") is None and registry.get_plugin_creator(SKIP, "1", "") is v2
    assert registry.get_creator(SKIP, "1", "other_namespace") is None
    assert registry.get_creator(QKV, "99", "") is None
    assert [f.name for f in v2.field_names] == ["ld", "type_id", "beta", "gamma", "bias"]
    assert v2.name == SKIP and v2.plugin_version == "1" and v2.plugin_namespace == ""
    fields = trt.PluginFieldCollection(skip_fields()[0])
    with pytest.raises(TypeError):
        v3.create_plugin("p", fields, 0)
    network = trt.Builder(logger).create_network(0)
    with pytest.raises(TypeError):
        network.add_plugin_v3([], [], v2.create_plugin("p", fields))
    assert v3.create_plugin("p", fields, trt.TensorRTPhase.BUILD).clone().plugin_version == "5"


# ----------------------------------------------------------------------------------------------
# Math (docs/SPEC.md "Embedding plugin", "Attention plugin", "Skip-LayerNorm plugin")


@pytest.mark.parametrize("version", ["1", "6"])
def test_embedding_layernorm_fixed(logger, device, version):
    S, B, E = 9, 3, 8
    fields, w = emb_fields(E=E, output_fp16=0, mha_type_id=1)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 11, (S, B)).astype(np.int32)
    ids[2, 1] = 11  # out of range: the token is skipped (zeros)
    segs = rng.integers(0, 2, (S, B)).astype(np.int32)
    mask = np.zeros((S, B), np.int32)
    for b, n in enumerate([9, 4, 1]):
        mask[:n, b] = 1
    emb, mask_idx = run_plugin(logger, device, EMB, version, fields, [ids, segs, mask])
    assert emb.shape == (S, B, E, 1, 1) and emb.dtype == torch.float32
    summed = (
        w["bert_embeddings_word_embeddings"][torch.from_numpy(ids).long().clamp(max=10)]
        + w["bert_embeddings_token_type_embeddings"][torch.from_numpy(segs).long()]
        + w["bert_embeddings_position_embeddings"][:S].unsqueeze(1)
    )
    want = layernorm(summed, w["bert_embeddings_layernorm_gamma"], w["bert_embeddings_layernorm_beta"], 0.0)
    want[2, 1] = 0
    torch.testing.assert_close(emb[..., 0, 0].double(), want, atol=1e-5, rtol=0)
    # Unfused mask index [B, 1]: leading valid tokens, even for a fused-MHA mha_type_id.
    assert mask_idx.dtype == torch.int32 and mask_idx.tolist() == [[9], [4], [1]]


def test_embedding_layernorm_fp16_output(logger, device):
    fields, w = emb_fields(output_fp16=1)
    ids = np.array([[1, 2], [3, 4]], np.int32)
    emb, _ = run_plugin(logger, device, EMB, "1", fields, [ids, np.zeros_like(ids), np.ones_like(ids)])
    assert emb.dtype == torch.float16


@pytest.mark.parametrize("version,megatron", [("2", False), ("4", False), ("3", True), ("5", True)])
def test_embedding_layernorm_varseqlen(logger, device, version, megatron):
    E = 8
    fields, w = emb_fields(E=E, positions=128, output_fp16=1)
    lengths = [5, 130, 0, 3]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    rng = np.random.default_rng(2)
    tokens = cu[-1] + 2  # two padding tokens after the last sequence are not embedded
    ids = rng.integers(0, 11, tokens).astype(np.int32)
    segs = rng.integers(0, 2, tokens).astype(np.int32)
    dummy = np.zeros(130, np.int32)
    out0, out1 = run_plugin(logger, device, EMB, version, fields, [ids, segs, cu, dummy])
    assert out0.shape == (tokens, E, 1, 1) and out0.dtype == torch.float16
    positions = torch.cat([torch.arange(n) for n in lengths] + [torch.zeros(2, dtype=torch.long)])
    summed = (
        w["bert_embeddings_word_embeddings"].half()[torch.from_numpy(ids).long()]
        + w["bert_embeddings_token_type_embeddings"].half()[torch.from_numpy(segs).long()]
        + w["bert_embeddings_position_embeddings"].half()[positions.clamp(max=127)]
    )
    want = layernorm(summed.float(), w["bert_embeddings_layernorm_gamma"], w["bert_embeddings_layernorm_beta"], 0.0)
    # Positions 128 and 129 are outside the position table: skipped, like the padding tokens.
    skipped = (positions >= 128) | (torch.arange(tokens) >= cu[-1])
    assert skipped.sum() == 4
    want[skipped] = 0
    torch.testing.assert_close(out0[..., 0, 0].double(), want, atol=1e-2, rtol=0)
    if megatron:
        summed[skipped] = 0
        torch.testing.assert_close(out1[..., 0, 0], summed, atol=1e-2, rtol=0)
    else:
        assert out1.shape == () and out1.dtype == torch.int32


def attention_reference(qkv, lengths, heads):
    """qkv [S, B, 3E] in [head][q|k|v][h] order; keys ≥ lengths[b] masked → [S, B, E] (float64)."""
    S, B, threeE = qkv.shape
    H = threeE // 3 // heads
    x = qkv.double().reshape(S, B, heads, 3, H)
    q, k, v = x[..., 0, :], x[..., 1, :], x[..., 2, :]
    scores = torch.einsum("sbnh,tbnh->bnst", q, k) / math.sqrt(H)
    key_pos = torch.arange(S).view(1, 1, 1, S)
    scores = scores.masked_fill(key_pos >= torch.tensor(lengths).view(B, 1, 1, 1), float("-inf"))
    probs = torch.softmax(scores, -1)
    return torch.einsum("bnst,tbnh->sbnh", probs, v).reshape(S, B, heads * H)


@pytest.mark.parametrize("version", ["1", "4"])
@pytest.mark.parametrize("S,N,H", [(7, 3, 5), (37, 2, 16), (130, 1, 7)])
def test_attention_fixed_any_length_and_head_size(logger, device, version, S, N, H):
    B, E = 2, N * H
    rng = np.random.default_rng(S)
    qkv = rng.standard_normal((S, B, 3 * E, 1, 1)).astype(np.float32)
    lengths = [S, max(1, S // 3)]
    mask_idx = np.array([[n] for n in lengths], np.int32)
    (ctx,) = run_plugin(logger, device, QKV, version, qkv_fields(E=E, N=N), [qkv, mask_idx])
    assert ctx.shape == (S, B, E, 1, 1)
    want = attention_reference(torch.from_numpy(qkv[..., 0, 0]), lengths, N)
    torch.testing.assert_close(ctx[..., 0, 0].double(), want, atol=1e-5, rtol=0)


def test_attention_without_mask(logger, device):
    S, B, N, H = 6, 2, 2, 4
    qkv = np.random.default_rng(0).standard_normal((S, B, 3 * N * H, 1, 1)).astype(np.float32)
    (ctx,) = run_plugin(logger, device, QKV, "1", qkv_fields(E=N * H, N=N, has_mask=0), [qkv])
    want = attention_reference(torch.from_numpy(qkv[..., 0, 0]), [S, S], N)
    torch.testing.assert_close(ctx[..., 0, 0].double(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("version,fp16", [("2", True), ("5", True), ("2", False)])
def test_attention_varseqlen(logger, device, version, fp16):
    """Packed attention; FP32 too, which TensorRT's fused-only varseqlen kernels lack."""
    N, H = 2, 6
    E = N * H
    lengths = [4, 1, 0, 9]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    qkv = np.random.default_rng(3).standard_normal((cu[-1], 3 * E, 1, 1)).astype(np.float16 if fp16 else np.float32)
    dummy = np.zeros(12, np.int32)
    tagged = trt.PluginField("var_seqlen", np.array([1], np.int32), F32)
    fields = qkv_fields(type_id=int(fp16), E=E, N=N) + [tagged]
    (ctx,) = run_plugin(logger, device, QKV, version, fields, [qkv, np.zeros(1, np.int32), cu, dummy], fp16=fp16)
    assert ctx.shape == (cu[-1], E, 1, 1) and ctx.dtype == (torch.float16 if fp16 else torch.float32)
    t = torch.from_numpy(qkv[..., 0, 0])
    want = torch.cat(
        [attention_reference(t[a:b].unsqueeze(1), [b - a], N)[:, 0] for a, b in zip(cu[:-1], cu[1:]) if b > a]
    )
    torch.testing.assert_close(ctx[..., 0, 0].double(), want, atol=2e-3, rtol=0)


@pytest.mark.parametrize("version", ["1", "5"])
def test_skip_layernorm_fixed_with_bias(logger, device, version):
    S, B, E = 5, 2, 8
    bias = np.linspace(-1, 1, E)
    fields, beta, gamma = skip_fields(E=E, bias=bias)
    rng = np.random.default_rng(4)
    x, skip = (rng.standard_normal((S, B, E, 1, 1)).astype(np.float32) for _ in range(2))
    (y,) = run_plugin(logger, device, SKIP, version, fields, [x, skip])
    summed = torch.from_numpy(x + skip)[..., 0, 0] + torch.from_numpy(bias)
    torch.testing.assert_close(y[..., 0, 0].double(), layernorm(summed, gamma, beta, 0.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("E,type_id,eps", [(768, 0, 2.0**-23), (768, 1, 2.0**-10), (64, 0, 0.0)])
def test_skip_layernorm_epsilon_rule(logger, device, E, type_id, eps):
    """ε is the compute type's machine epsilon for E ∈ {768, 1024}, else 0."""
    fields, beta, gamma = skip_fields(E=E, type_id=type_id)
    # A zero-mean row whose variance is close to ε, so ε changes the result visibly.
    amplitude = 3e-2 if type_id else 1e-3
    row = (amplitude * np.sin(np.arange(E))).astype(np.float32).reshape(1, 1, E, 1, 1)
    (y,) = run_plugin(logger, device, SKIP, "1", fields, [row, np.zeros_like(row)], fp16=bool(type_id))
    want = layernorm(torch.from_numpy(row[..., 0, 0]), gamma, beta, eps)
    other = layernorm(torch.from_numpy(row[..., 0, 0]), gamma, beta, 2.0**-10 if eps == 0 else 0.0)
    got = y[..., 0, 0].double()
    assert (got - want).abs().max() < (got - other).abs().max()
    torch.testing.assert_close(got, want, atol=5e-3 if type_id else 1e-4, rtol=0)


@pytest.mark.parametrize("version", ["2", "6"])
def test_skip_layernorm_varseqlen(logger, device, version):
    T, E = 11, 8
    fields, beta, gamma = skip_fields(E=E, type_id=1, with_ld=True)
    rng = np.random.default_rng(5)
    x, skip = (rng.standard_normal((T, E, 1, 1)).astype(np.float16) for _ in range(2))
    (y,) = run_plugin(logger, device, SKIP, version, fields, [x, skip], fp16=True)
    assert y.dtype == torch.float16 and y.shape == (T, E, 1, 1)
    summed = torch.from_numpy(x.astype(np.float32) + skip.astype(np.float32))[..., 0, 0]
    torch.testing.assert_close(y[..., 0, 0].double(), layernorm(summed, gamma, beta, 0.0), atol=1e-2, rtol=0)
