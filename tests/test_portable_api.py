"""The portable engine as a TensorRT stand-in: API names and values, shape checks, profiles, execution.

Networks are built by hand through the TensorRT API (docs/SPEC.md "Layer graph" / "Packed path") and compared with
an independent float64 computation of the same BERT (tests/portable_bert.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import helpers.portable as trt
from portable_bert import (
    TinyConfig,
    add_dense,
    build_fixed_network,
    build_varseqlen_network,
    random_batch,
    random_weights,
    reference_logits,
    run_engine,
)

SMALL = TinyConfig(hidden=48, heads=3, intermediate=96, layers=2)
ODD = TinyConfig(hidden=40, heads=5, intermediate=70, layers=1)


def build(logger, network, config):
    plan = trt.Builder(logger).build_serialized_network(network, config)
    assert plan is not None, logger.messages(trt.Logger.ERROR)
    return trt.Runtime(logger).deserialize_cuda_engine(plan)


def feeds(cfg, batch, seq, seed=1):
    ids, segs, mask = random_batch(cfg, batch, seq, seed)
    return {"input_ids": ids, "segment_ids": segs, "input_mask": mask}


# ----------------------------------------------------------------------------------------------
# API surface


def test_enum_values_are_tensorrts():
    # Values from tensorrt-stubs 10.13 (the bindings' integer values).
    assert [int(trt.DataType[n]) for n in ("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64")] == [
        0, 1, 2, 3, 4, 5, 6, 7, 8,
    ]
    assert [int(t) for t in trt.PluginFieldType] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert trt.PluginFieldType.DIMS.value == 7 and trt.PluginFieldType.UNKNOWN.value == 8
    assert int(trt.BuilderFlag.FP16) == 0 and int(trt.BuilderFlag.INT8) == 1
    assert int(trt.BuilderFlag.SPARSE_WEIGHTS) == 7 and int(trt.BuilderFlag.DISTRIBUTIVE_INDEPENDENCE) == 28
    assert int(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS) == 10 and int(trt.BuilderFlag.DIRECT_IO) == 11
    assert int(trt.TacticSource.CUBLAS) == 0 and int(trt.TacticSource.CUDNN) == 2
    assert int(trt.ElementWiseOperation.POW) == 6 and int(trt.ActivationType.TANH) == 2
    assert int(trt.TensorIOMode.INPUT) == 1 and int(trt.TensorIOMode.OUTPUT) == 2
    assert int(trt.TensorRTPhase.BUILD) == 0 and int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) == 0
    assert int(trt.ProfilingVerbosity.DETAILED) == 2 and int(trt.MemoryPoolType.WORKSPACE) == 0
    assert trt.Logger.INFO == trt.ILogger.Severity.INFO and int(trt.Logger.VERBOSE) == 4
    # Like pybind11 enums: no equality with plain ints, distinct enums never equal.
    assert trt.DataType.FLOAT != 0 and trt.DataType.HALF != trt.PluginFieldType.FLOAT32
    assert trt.float16 is trt.DataType.HALF and trt.nptype(trt.int32) is np.int32


def test_builder_config_flags_and_tactics(logger):
    config = trt.Builder(logger).create_builder_config()
    assert not config.get_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    assert config.get_flag(trt.BuilderFlag.FP16) and config.flags == (1 << 0) | (1 << 7)
    config.clear_flag(trt.BuilderFlag.FP16)
    assert not config.get_flag(trt.BuilderFlag.FP16)
    # TensorRT 10 disables cuBLAS/cuDNN tactics by default; the demo adds CUBLAS and removes CUDNN.
    sources = config.get_tactic_sources()
    assert not sources & (1 << int(trt.TacticSource.CUBLAS))
    assert config.set_tactic_sources((sources | 1 << int(trt.TacticSource.CUBLAS)) & ~(1 << int(trt.TacticSource.CUDNN)))
    assert config.get_tactic_sources() & 1
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2500 * 1024 * 1024)
    assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == 2500 * 1024 * 1024
    config.set_quantization_flag(trt.QuantizationFlag.CALIBRATE_BEFORE_FUSION)
    assert config.get_quantization_flag(trt.QuantizationFlag.CALIBRATE_BEFORE_FUSION)
    cache = config.create_timing_cache(b"")
    assert config.set_timing_cache(cache, ignore_mismatch=False)
    blob = bytes(config.get_timing_cache().serialize())
    assert config.create_timing_cache(blob) is not None
    assert config.create_timing_cache(b"garbage") is None and logger.messages(trt.Logger.ERROR)


def test_weights_and_dims():
    w = trt.Weights(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert w.dtype == trt.DataType.FLOAT and w.size == 6 and w.nbytes == 24
    assert trt.Weights(np.zeros(2, np.int32)).dtype == trt.DataType.INT32
    with pytest.raises(TypeError):
        trt.Weights(np.zeros(2, np.float64))
    d = trt.Dims([2, -1, 3])
    assert len(d) == 3 and d == (2, -1, 3) and d == [2, -1, 3] and list(d) == [2, -1, 3] and str(d) == "(2, -1, 3)"


def test_default_names_types_and_queries(logger):
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    x = network.add_input("x", trt.float32, (-1, 2, 4, 1, 1))
    conv = add_dense(trt, network, x, np.ones((3, 4), np.float32), np.zeros(3, np.float32))
    act = network.add_activation(conv.get_output(0), trt.ActivationType.TANH)
    assert conv.name == "(Unnamed Layer* 0) [Convolution]" and conv.type == trt.LayerType.CONVOLUTION
    assert conv.get_output(0).name == "(Unnamed Layer* 0) [Convolution]_output"
    assert act.get_output(0).name != conv.get_output(0).name
    assert act.get_output(0).shape == (-1, 2, 3, 1, 1) and act.get_output(0).dtype == trt.float32
    assert network.num_layers == 2 and network.get_layer(1) is act and network.num_inputs == 1
    assert x.is_network_input and not act.get_output(0).is_network_output
    network.mark_output(act.get_output(0))
    assert act.get_output(0).is_network_output and network.num_outputs == 1
    assert act.get_output(0).set_dynamic_range(-2.0, 2.0) and act.get_output(0).dynamic_range == (-2.0, 2.0)
    conv.precision = trt.float32
    assert conv.precision_is_set
    conv.reset_precision()
    assert not conv.precision_is_set


def test_shapes_follow_later_changes_to_layers(logger):
    network = trt.Builder(logger).create_network(0)
    x = network.add_input("x", trt.float32, (2, 3, 4))
    shuffle = network.add_shuffle(x)
    after = network.add_activation(shuffle.get_output(0), trt.ActivationType.RELU).get_output(0)
    assert after.shape == (2, 3, 4)
    shuffle.second_transpose = (2, 0, 1)
    assert after.shape == (4, 2, 3)
    shuffle.reshape_dims = (0, -1)  # (2, 12); a placeholder 0 copies the input dimension
    shuffle.second_transpose = (1, 0)
    assert after.shape == (12, 2)
    x.shape = (5, 3, 4)
    assert shuffle.get_output(0).shape == (12, 5)
    shuffle.first_transpose = (1, 0, 2)
    assert shuffle.get_output(0).shape == (20, 3)


# ----------------------------------------------------------------------------------------------
# Build-time shape inference and profile errors (build returns None and logs one ERROR)


def _failed_build(logger, network, config=None):
    builder = trt.Builder(logger)
    plan = builder.build_serialized_network(network, config or builder.create_builder_config())
    assert plan is None
    errors = logger.messages(trt.Logger.ERROR)
    assert errors
    return errors[-1]


def test_convolution_needs_rank_four_and_a_1x1_kernel(logger):
    network = trt.Builder(logger).create_network(0)
    x = network.add_input("x", trt.float32, (4, 6))
    conv = add_dense(trt, network, x, np.ones((2, 6), np.float32), np.zeros(2, np.float32))
    network.mark_output(conv.get_output(0))
    assert "rank" in _failed_build(logger, network) and conv.name in logger.messages(trt.Logger.ERROR)[0]

    network = trt.Builder(logger).create_network(0)
    x = network.add_input("x", trt.float32, (1, 6, 4, 4))
    conv = network.add_convolution_nd(x, 2, (3, 3), trt.Weights(np.ones(2 * 6 * 9, np.float32)))
    network.mark_output(conv.get_output(0))
    assert "1x1" in _failed_build(logger, network)


def test_convolution_weight_count_is_checked(logger):
    network = trt.Builder(logger).create_network(0)
    x = network.add_input("x", trt.float32, (2, 1, 6, 1, 1))
    conv = add_dense(trt, network, x, np.ones((2, 5), np.float32), np.zeros(2, np.float32))
    network.mark_output(conv.get_output(0))
    assert "count 10" in _failed_build(logger, network)


def test_elementwise_broadcast_rules(logger):
    network = trt.Builder(logger).create_network(0)
    a = network.add_input("a", trt.float32, (2, 3, 1))
    b = network.add_input("b", trt.float32, (1, 3, 4))
    ok = network.add_elementwise(a, b, trt.ElementWiseOperation.SUM)
    assert ok.get_output(0).shape == (2, 3, 4)
    c = network.add_input("c", trt.float32, (2, 4, 1))
    bad = network.add_elementwise(a, c, trt.ElementWiseOperation.PROD)
    network.mark_output(bad.get_output(0))
    assert "not broadcastable" in _failed_build(logger, network)

    network = trt.Builder(logger).create_network(0)
    a = network.add_input("a", trt.float32, (2, 3))
    b = network.add_input("b", trt.float32, (3,))
    network.mark_output(network.add_elementwise(a, b, trt.ElementWiseOperation.SUM).get_output(0))
    assert "same rank" in _failed_build(logger, network)


def test_plugin_with_wrong_input_count_fails_the_build(logger):
    creator = trt.get_plugin_registry().get_creator("CustomSkipLayerNormPluginDynamic", "1", "")
    fields = trt.PluginFieldCollection([
        trt.PluginField("ld", np.array([4], np.int32), trt.PluginFieldType.INT32),
        trt.PluginField("type_id", np.array([0], np.int32), trt.PluginFieldType.INT32),
        trt.PluginField("beta", np.zeros(4, np.float32), trt.PluginFieldType.FLOAT32),
        trt.PluginField("gamma", np.ones(4, np.float32), trt.PluginFieldType.FLOAT32),
    ])
    plugin = creator.create_plugin("skip_layer_norm", fields)
    network = trt.Builder(logger).create_network(0)
    x = network.add_input("x", trt.float32, (3, 2, 4, 1, 1))
    layer = network.add_plugin_v2([x], plugin)
    network.mark_output(layer.get_output(0))
    assert "expects 2 inputs" in _failed_build(logger, network)


def test_no_output_and_missing_profile(logger):
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    x = network.add_input("x", trt.float32, (-1, 4))
    assert "at least one output" in _failed_build(logger, network)
    shuffle = network.add_shuffle(x)
    network.mark_output(shuffle.get_output(0))
    assert "no optimization profile" in _failed_build(logger, network)

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4, 1), (2, 4, 1), (3, 4, 1))
    config.add_optimization_profile(profile)
    assert "rank" in _failed_build(logger, network, config)

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 5), (2, 5), (3, 5))
    config.add_optimization_profile(profile)
    assert "static dimensions" in _failed_build(logger, network, config)


def test_profile_shapes_must_be_ordered(logger):
    profile = trt.Builder(logger).create_optimization_profile()
    with pytest.raises(RuntimeError, match="opt input provided to optimization profile is invalid"):
        profile.set_shape("x", (1, 8), (2, 4), (2, 8))
    with pytest.raises(RuntimeError, match="max input"):
        profile.set_shape("x", (1, 8), (2, 8), (1, 8))
    profile.set_shape("x", (1, 8), (2, 8), (4, 8))
    assert profile.get_shape("x") == [(1, 8), (2, 8), (4, 8)]


# ----------------------------------------------------------------------------------------------
# Engines: I/O, profiles, execution against the reference


def test_static_engine_io_and_single_implicit_profile(logger, device):
    builder = trt.Builder(logger)
    network, config = build_fixed_network(trt, builder, random_weights(SMALL), SMALL, [2], [7])
    engine = build(logger, network, config)
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert names == ["input_ids", "segment_ids", "input_mask", "logits_out"]
    assert [engine.get_tensor_mode(n) for n in names] == [trt.TensorIOMode.INPUT] * 3 + [trt.TensorIOMode.OUTPUT]
    assert engine.get_tensor_dtype("input_ids") == trt.int32 and engine.get_tensor_dtype("logits_out") == trt.float32
    assert engine.get_tensor_shape("logits_out") == (2, 7, 2, 1, 1)
    assert engine.num_optimization_profiles == 1
    assert engine.get_tensor_profile_shape("input_mask", 0) == [(2, 7)] * 3
    context = engine.create_execution_context()
    assert context.infer_shapes() == [] and context.get_tensor_shape("logits_out") == (2, 7, 2, 1, 1)
    assert not context.set_input_shape("input_ids", (1, 7))


@pytest.mark.parametrize("v3", [False, True], ids=["v2-plugins", "v3-plugins"])
@pytest.mark.parametrize("cfg", [SMALL, ODD], ids=["E48-N3", "E40-N5"])
def test_fixed_length_bert_matches_reference(logger, device, cfg, v3):
    weights = random_weights(cfg, seed=3)
    network, config = build_fixed_network(trt, trt.Builder(logger), weights, cfg, [1, 3], [7, 37], v3=v3)
    engine = build(logger, network, config)
    assert engine.num_optimization_profiles == 4  # (1,7), (1,37), (3,7), (3,37)
    for profile, (batch, seq) in enumerate([(1, 7), (1, 37), (3, 7), (3, 37)]):
        data = feeds(cfg, batch, seq, seed=profile)
        got = run_engine(trt, engine, data, device, profile)["logits_out"]
        assert got.shape == (batch, seq, 2, 1, 1)
        want = reference_logits(weights, cfg, data["input_ids"], data["segment_ids"], data["input_mask"])
        np.testing.assert_allclose(got.reshape(batch, seq, 2), want, atol=1e-4, rtol=0)


def test_smaller_shapes_inside_a_profile(logger, device):
    weights = random_weights(SMALL)
    network, config = build_fixed_network(trt, trt.Builder(logger), weights, SMALL, [1, 4], [16, 32])
    engine = build(logger, network, config)
    data = feeds(SMALL, 2, 32)  # profile 3 is (min (1,32), max (4,32))
    got = run_engine(trt, engine, data, device, profile=3)["logits_out"].reshape(2, 32, 2)
    want = reference_logits(weights, SMALL, data["input_ids"], data["segment_ids"], data["input_mask"])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_input_shape_outside_the_active_profile_is_refused(logger):
    network, config = build_fixed_network(trt, trt.Builder(logger), random_weights(SMALL), SMALL, [1, 4], [16, 32])
    engine = build(logger, network, config)
    assert engine.get_tensor_profile_shape("input_ids", 1) == [(1, 32), (1, 32), (1, 32)]
    context = engine.create_execution_context()
    assert context.active_optimization_profile == 0
    assert context.infer_shapes() == ["input_ids", "segment_ids", "input_mask"]
    before = len(logger.messages(trt.Logger.ERROR))
    assert context.set_input_shape("input_ids", (2, 16)) is False  # profile 0 is batch 1
    errors = logger.messages(trt.Logger.ERROR)[before:]
    assert len(errors) == 1 and "does not satisfy any optimization profiles" in errors[0] and "[1,16]..[1,16]" in errors[0]
    assert context.set_input_shape("input_ids", (1, 16, 1)) is False
    assert context.set_optimization_profile_async(3, 0)
    assert context.set_input_shape("input_ids", (3, 32))
    assert context.get_tensor_shape("input_ids") == (3, 32)
    assert context.get_tensor_shape("logits_out") == (-1, -1, 2, 1, 1)  # not all inputs known yet
    assert not context.execute_async_v3(0)
    assert context.set_optimization_profile_async(4, 0) is False


def test_mismatched_input_shapes_fail_shape_inference_and_execution(logger):
    network, config = build_fixed_network(trt, trt.Builder(logger), random_weights(SMALL), SMALL, [1, 4], [32])
    context = build(logger, network, config).create_execution_context()
    context.set_optimization_profile_async(1, 0)
    # Each shape is within the profile, so each set_input_shape succeeds (inputs are set one by one).
    for name, batch in (("input_ids", 2), ("segment_ids", 2), ("input_mask", 3)):
        assert context.set_input_shape(name, (batch, 32))
    with pytest.raises(RuntimeError, match="differ in shape"):
        context.infer_shapes()
    assert context.get_tensor_shape("logits_out") == (-1, 32, 2, 1, 1)  # the build-time shape
    assert context.execute_async_v3(0) is False
    assert "differ in shape" in logger.messages(trt.Logger.ERROR)[-1]


def test_fp16_engine_is_close_to_fp32(logger, device):
    """On CPU, FP16 layers keep FP16 storage and compute GEMMs in FP32 (no fast CPU half GEMM)."""
    weights = random_weights(SMALL, seed=5)
    data = feeds(SMALL, 3, 37)
    outputs = {}
    for fp16 in (False, True):
        network, config = build_fixed_network(trt, trt.Builder(logger), weights, SMALL, [3], [37], fp16=fp16)
        engine = build(logger, network, config)
        assert engine.get_tensor_dtype("logits_out") == trt.float32
        outputs[fp16] = run_engine(trt, engine, data, device)["logits_out"]
    assert outputs[True].dtype == np.float32
    assert np.abs(outputs[True] - outputs[False]).max() <= 2e-2
    assert not np.array_equal(outputs[True], outputs[False])  # it really ran in half precision


def test_int8_without_ranges_runs_unquantized_and_sparsity_warns(logger, device):
    weights = random_weights(ODD)
    network, config = build_fixed_network(trt, trt.Builder(logger), weights, ODD, [2], [9])
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    engine = build(logger, network, config)
    warnings = logger.messages(trt.Logger.WARNING)
    if device.type == "cuda":  # sparse GEMMs exist there (tests/test_kernels.py checks them)
        assert not warnings
    else:
        assert len(warnings) == 1 and "SPARSE_WEIGHTS" in warnings[0]
    assert set(engine.build_info["flags"]) == {"INT8", "SPARSE_WEIGHTS"}
    data = feeds(ODD, 2, 9)
    got = run_engine(trt, engine, data, device)["logits_out"].reshape(2, 9, 2)
    want = reference_logits(weights, ODD, data["input_ids"], data["segment_ids"], data["input_mask"])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_precision_constraints_keep_layers_in_fp32(logger, device):
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    x = network.add_input("x", trt.float32, (2, 3, 4, 1, 1))
    kernel = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    conv = add_dense(trt, network, x, kernel, np.zeros(4, np.float32))
    network.mark_output(conv.get_output(0))
    outputs = {}
    for constrained in (False, True):
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)
        if constrained:
            conv.precision = trt.float32
        engine = build(logger, network, config)
        context = engine.create_execution_context()
        data = torch.randn(2, 3, 4, 1, 1, generator=torch.Generator().manual_seed(0)).to(device) * 3
        out = torch.empty(2, 3, 4, 1, 1, device=device)
        context.set_tensor_address("x", data.data_ptr())
        context.set_tensor_address(engine.get_tensor_name(1), out.data_ptr())
        assert context.execute_async_v3(0), logger.messages(trt.Logger.ERROR)
        exact = torch.einsum("sbc,oc->sbo", data[..., 0, 0].double(), torch.from_numpy(kernel).to(device).double())
        outputs[constrained] = (out[..., 0, 0].double() - exact).abs().max().item()
    assert outputs[True] < 1e-5 < outputs[False]


def test_varseqlen_bert_matches_reference(logger, device):
    cfg = SMALL
    weights = random_weights(cfg, seed=7)
    network, config = build_varseqlen_network(trt, trt.Builder(logger), weights, cfg, [2, 4], max_seq=24)
    engine = build(logger, network, config)
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert names == ["input_ids", "segment_ids", "cu_seqlens", "max_seqlen", "logits_out"]
    rng = np.random.default_rng(0)
    lengths = [24, 5, 17]
    seqs = [random_batch(cfg, 1, n, seed=i)[:2] for i, n in enumerate(lengths)]
    data = {
        "input_ids": np.concatenate([ids[0] for ids, _ in seqs]),
        "segment_ids": np.concatenate([segs[0] for _, segs in seqs]),
        "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
        "max_seqlen": rng.integers(0, 9, 24).astype(np.int32),  # only its length matters
    }
    got = run_engine(trt, engine, data, device, profile=1)["logits_out"]
    assert got.shape == (2, sum(lengths), 1, 1)
    want = np.concatenate(
        [reference_logits(weights, cfg, ids, segs, np.ones_like(ids))[0] for ids, segs in seqs]
    )  # [T, 2]
    np.testing.assert_allclose(got[:, :, 0, 0].T, want, atol=2e-2, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available to PyTorch")
def test_execution_is_cuda_graph_capturable(logger, monkeypatch):
    monkeypatch.setattr("helpers.portable.device._selected", torch.device("cuda", torch.cuda.current_device()))
    weights = random_weights(SMALL)
    network, config = build_fixed_network(trt, trt.Builder(logger), weights, SMALL, [2], [16], fp16=True)
    engine = build(logger, network, config)
    context = engine.create_execution_context()
    data = {k: torch.from_numpy(v).cuda() for k, v in feeds(SMALL, 2, 16).items()}
    out = torch.empty(2, 16, 2, 1, 1, device="cuda")
    for name, tensor in [*data.items(), ("logits_out", out)]:
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        assert context.execute_async_v3(stream.cuda_stream)  # warm-up: wraps the buffers once
        stream.synchronize()
        eager = out.clone()
        out.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            assert context.execute_async_v3(stream.cuda_stream)
        graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, eager)


def test_rebinding_addresses_and_execute_v2(logger, device):
    """Views are cached per address: binding new buffers must send results to the new ones."""
    weights = random_weights(ODD)
    network, config = build_fixed_network(trt, trt.Builder(logger), weights, ODD, [2], [9])
    engine = build(logger, network, config)
    context = engine.create_execution_context()
    data = {k: torch.from_numpy(v).to(device) for k, v in feeds(ODD, 2, 9).items()}
    first, second = (torch.zeros(2, 9, 2, 1, 1, device=device) for _ in range(2))
    for name, tensor in data.items():
        context.set_tensor_address(name, tensor.data_ptr())
    for out in (first, second):
        context.set_tensor_address("logits_out", out.data_ptr())
        assert context.get_tensor_address("logits_out") == out.data_ptr()
        assert context.execute_async_v3(torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0)
    third = torch.zeros_like(first)
    assert context.execute_v2([data["input_ids"].data_ptr(), data["segment_ids"].data_ptr(), data["input_mask"].data_ptr(), third.data_ptr()])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    want = reference_logits(weights, ODD, *(v.cpu().numpy() for v in data.values()))
    for out in (first, second, third):
        np.testing.assert_allclose(out.cpu().numpy().reshape(2, 9, 2), want, atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available to PyTorch")
def test_host_buffers_on_a_cuda_engine_fail_cleanly(logger, monkeypatch):
    """A host address is refused before any kernel reads it, and CUDA stays usable afterwards."""
    monkeypatch.setattr("helpers.portable.device._selected", torch.device("cuda", torch.cuda.current_device()))
    weights = random_weights(ODD)
    network, config = build_fixed_network(trt, trt.Builder(logger), weights, ODD, [1], [4])
    context = build(logger, network, config).create_execution_context()
    data = {k: torch.from_numpy(v) for k, v in feeds(ODD, 1, 4).items()}
    out = torch.zeros(1, 4, 2, 1, 1, device="cuda")
    assert not context.execute_v2([*(t.data_ptr() for t in data.values()), out.data_ptr()])
    assert "where this engine runs" in logger.messages(trt.Logger.ERROR)[-1]
    on_gpu = [t.cuda() for t in data.values()]
    assert context.execute_v2([*(t.data_ptr() for t in on_gpu), out.data_ptr()])
    want = reference_logits(weights, ODD, *(v.numpy() for v in data.values()))
    np.testing.assert_allclose(out.cpu().numpy().reshape(1, 4, 2), want, atol=1e-4, rtol=0)


def test_missing_address_fails_execution(logger):
    network, config = build_fixed_network(trt, trt.Builder(logger), random_weights(ODD), ODD, [1], [4])
    context = build(logger, network, config).create_execution_context()
    assert context.execute_async_v3(0) is False
    assert "no address set" in logger.messages(trt.Logger.ERROR)[-1]


def test_device_selection(monkeypatch):
    previous = trt.get_device()
    try:
        trt.set_device(None)
        monkeypatch.setenv("DEMOBERT_DEVICE", "cpu")
        assert trt.get_device() == torch.device("cpu")
        monkeypatch.setenv("DEMOBERT_DEVICE", "tpu")
        with pytest.raises(ValueError, match="unknown device 'tpu'"):
            trt.get_device()
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="CUDA is not available"):
                trt.set_device("cuda:0")
        assert trt.set_device("cpu") == torch.device("cpu")  # set_device wins over the variable
    finally:
        trt.set_device(previous)
