"""Activation smoothing (``--smooth ALPHA``, helpers/smoothing.py) on the portable engine (CPU).

* The scales are the formula's, from the calibration statistics and the weights.
* Smoothing is exact in float: an FP32 engine of smoothed weights gives the logits of the original.
* PTQ engines with smoothing (both builders) track FP32; their INT8 GEMMs stay INT8 GEMMs.
* The scales are kept next to the calibration cache; caches and options that do not match are
  one-line errors.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import builder
import builder_varseqlen
import checkpoints
import family_models
import helpers.portable as trt
from bench.int8_accuracy import logits_agreement, run_packed_engine
from bert_weights import BertConfig
from builder_calibration import check_8bit_options
from builder_utils import save_engine
from engines import (
    build,
    build_packed,
    engine_logits,
    expect_clean_failure,
    hf_dense_inputs,
    ptq_options,
    run_hf,
)
from engines import INT8_SEQ as SEQ
from helpers import smoothing
from helpers.portable.engine_file import read_engine
from helpers.portable.graph import load_graph
from test_calibrator import int8_squared_error
from test_portable_passes import cuda_patterns
from varseqlen_network import batch_profiles


def test_scales_follow_the_formula():
    config = BertConfig(num_attention_heads=1, hidden_size=2, intermediate_size=3, num_hidden_layers=1)
    rng = np.random.default_rng(0)
    weights = {
        "l0_attention_self_qkv_kernel": rng.standard_normal((6, 2)).astype(np.float32),
        "l0_intermediate_dense_kernel": rng.standard_normal((3, 2)).astype(np.float32),
        "cls_squad_output_weights": np.array([[0.5, -2.0], [0.25, 0.0]], np.float32),
    }
    maxima = {"l0_attention_qkv": np.array([4.0, 1.0]), "l0_intermediate_dense": np.array([0.0, 3.0]),
              "cls_squad_output": np.array([9.0, 16.0])}
    scales = smoothing.smoothing_scales(maxima, weights, config, 0.5)
    w = np.abs(weights["l0_attention_self_qkv_kernel"]).max(axis=0)
    np.testing.assert_allclose(scales["l0_attention_qkv"], np.sqrt(maxima["l0_attention_qkv"] / w), rtol=1e-6)
    assert scales["l0_intermediate_dense"][0] == 1.0  # a channel that never fires keeps its scale
    np.testing.assert_allclose(scales["cls_squad_output"], [np.sqrt(9.0 / 0.5), np.sqrt(16.0 / 2.0)], rtol=1e-6)
    np.testing.assert_allclose(smoothing.smoothing_scales(maxima, weights, config, 1.0)["cls_squad_output"], [9.0, 16.0])
    with pytest.raises(smoothing.SmoothingError, match="no input maxima for the dense layer 'cls_squad_output'"):
        smoothing.smoothing_scales({k: v for k, v in maxima.items() if k != "cls_squad_output"}, weights, config, 0.5)


@pytest.mark.parametrize("text", ["0", "1.5", "-0.5", "nan", "inf", "half"])
def test_alpha_outside_zero_one_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"0 < ALPHA <= 1"):
        smoothing.smoothing_alpha(text)
    assert smoothing.smoothing_alpha("1") == 1.0 and smoothing.smoothing_alpha("0.05") == 0.05


def random_scales(config, weights, seed):
    """Scales of 0.1 to 10 for every smoothed dense layer."""
    rng = np.random.default_rng(seed)
    return {layer: (10.0 ** rng.uniform(-1, 1, weights[kernel].shape[1])).astype(np.float32)
            for layer, kernel in smoothing.smoothed_layers(config).items()}


def float_engines(folder, tmp_path, packed=False, batch=4):
    """(plain, smoothed with random scales) FP32 engines of the --hf ``folder``."""
    script = builder_varseqlen if packed else builder
    plain, smoothed = tmp_path / "plain.engine", tmp_path / "smoothed.engine"
    argv = ["--hf", str(folder), "-o", str(plain), "-b", str(batch), "-s", str(SEQ), "--backend", "portable", "--device", "cpu"]
    assert script.main(argv) == 0
    args = script.parse_args(argv)
    _, logger = script.start_backend(args)
    trt.init_libnvinfer_plugins(logger, "")
    config = script.load_config(args, logger)
    weights = builder_varseqlen.load_weights("hf", args.hf, config, SEQ)
    scaled = smoothing.smooth_weights(weights, config, random_scales(config, weights, 1))
    if packed:
        serialized = builder_varseqlen.build_engine(logger, config, scaled, batch_profiles([batch], SEQ), SEQ)
    else:
        serialized = builder.build_engine(logger, config, scaled, [batch], [SEQ], args.workspace_size)
    save_engine(serialized, str(smoothed), logger)
    return plain, smoothed


def test_smoothed_fp8_build_keeps_gelu10(int8_workdir, smoothed_engine):
    """--smooth --fp8 with the INT8 build's cache: the same kept GELU ranges, but FP8 GEMMs take the
    GELU output with GELU10's range."""
    env = int8_workdir
    engine = env["work"] / "smoothed_fp8.engine"
    build(env, engine, *smooth_options(env, smoothed_engine[1]), "--fp8")
    kept = smoothing.read_scales(str(smoothed_engine[1]), 0.5)
    ranges = {t["name"]: t["dynamic_range"] for t in read_engine(engine.read_bytes())["tensors"]}
    layers = [name for name in kept if name.endswith(smoothing.GELU_RANGE)]
    assert layers and all(float(kept[name][0]) != smoothing.GELU10 for name in layers)
    for name in layers:
        gelu = name[: -len(smoothing.GELU_RANGE)] + "gelu"
        assert ranges[gelu] == pytest.approx([-smoothing.GELU10, smoothing.GELU10])


@pytest.mark.parametrize("packed", [False, True])
def test_smoothing_is_exact_in_float(int8_workdir, packed, tmp_path):
    """The LayerNorm folds and the residual factors undo each other: an FP32 engine of smoothed weights
    computes the original logits (to float rounding)."""
    env = int8_workdir
    features = env["features"]
    plain, smoothed = float_engines(env["work"] / "hf", tmp_path, packed, batch=20 if packed else 4)
    if packed:
        logits = [run_packed_engine(path, features, "cpu", chunk=20) for path in (plain, smoothed)]
    else:
        logits = [engine_logits(path, features) for path in (plain, smoothed)]
    valid = features.input_mask.astype(bool)
    np.testing.assert_allclose(logits[1][valid], logits[0][valid], rtol=1e-4, atol=1e-4)


def test_smoothing_folds_into_the_embedding_projection(tmp_path):
    """Factorized embeddings (ELECTRA): the first QKV's scales go into the projection's output rows."""
    model, folder = family_models.write_family_folder("electra", tmp_path / "electra")
    inputs = family_models.random_inputs(4, SEQ, model.config.vocab_size, 2, seed=3, avoid=model.config.pad_token_id)
    plain, smoothed = float_engines(folder, tmp_path)
    valid = inputs["input_mask"].astype(bool)
    reference = checkpoints.run_engine(plain, inputs, "cpu")
    np.testing.assert_allclose(checkpoints.run_engine(smoothed, inputs, "cpu")[valid], reference[valid], rtol=1e-4, atol=1e-4)


def smooth_options(env, cache, alpha="0.5"):
    return [*ptq_options(env, cache), "--smooth", alpha]


@pytest.fixture(scope="module")
def smoothed_engine(int8_workdir):
    """builder.py PTQ with --smooth 0.5 and its calibration cache."""
    env = int8_workdir
    engine, cache = env["work"] / "smoothed.engine", env["work"] / "smoothed_cache"
    build(env, engine, *smooth_options(env, cache))
    return engine, cache


def test_smoothed_build_keeps_the_scales_of_the_statistics(int8_workdir, smoothed_engine):
    """The scales next to the cache are the formula's, with HF's activation maxima over the padded
    calibration windows (padding included, as builder.py calibrates) and the model's weights."""
    env = int8_workdir
    kept = smoothing.read_scales(str(smoothed_engine[1]), 0.5)
    model = env["model"]
    weights = {"cls_squad_output": [model.qa_outputs]}
    for i, layer in enumerate(model.bert.encoder.layer):
        attention = layer.attention.self  # Q, K and V share the input: one column maximum over the three
        weights.update({f"l{i}_attention_qkv": [attention.query, attention.key, attention.value],
                        f"l{i}_intermediate_dense": [layer.intermediate.dense]})
    inputs = hf_dense_inputs(model, env["features"])
    layers = range(len(model.bert.encoder.layer))
    assert set(kept) == set(weights) | {f"l{i}_{smoothing.GELU_RANGE}" for i in layers}
    for name, linears in weights.items():
        w = np.max([np.abs(linear.weight.detach().numpy()).max(axis=0) for linear in linears], axis=0)
        x = inputs[name].flatten(0, 1).abs().amax(dim=0).numpy()
        np.testing.assert_allclose(kept[name], np.sqrt(x) / np.sqrt(w), rtol=2e-4, err_msg=name)


def test_smoothed_build_gives_the_gelu_output_its_least_squared_error_range(
        int8_workdir, smoothed_engine, fp32_and_ptq_engines):
    """--smooth replaces GELU10's fixed range of the GELU output (FC2's input) by the one that
    quantizes HF's GELU output over the padded calibration windows with the least squared error (within
    2 % of the best found on those samples by brute force); without --smooth the range stays 10."""
    env = int8_workdir
    kept = smoothing.read_scales(str(smoothed_engine[1]), 0.5)
    model = env["model"]
    gelu = {}
    run_hf(model, env["features"], hooks=[
        layer.output.dense.register_forward_pre_hook(lambda m, a, i=i: gelu.__setitem__(i, a[0].detach().double()))
        for i, layer in enumerate(model.bert.encoder.layer)])
    smoothed_ranges = {t["name"]: t["dynamic_range"] for t in read_engine(smoothed_engine[0].read_bytes())["tensors"]}
    plain_ranges = {t["name"]: t["dynamic_range"] for t in read_engine(fp32_and_ptq_engines[1].read_bytes())["tensors"]}
    for i, values in gelu.items():
        chosen = float(kept[f"l{i}_{smoothing.GELU_RANGE}"][0])
        peak = float(values.abs().max())
        best = min(int8_squared_error(values, peak * k / 1000) for k in range(1, 1001))
        assert int8_squared_error(values, chosen) <= 1.02 * best, i
        assert smoothed_ranges[f"l{i}_gelu"] == pytest.approx([-chosen, chosen])
        assert plain_ranges[f"l{i}_gelu"] == pytest.approx([-smoothing.GELU10, smoothing.GELU10])


@pytest.mark.parametrize("packed", [False, True])
def test_smoothed_ptq_engine_tracks_the_fp32_engine(int8_workdir, fp32_and_ptq_engines, smoothed_engine, packed):
    env = int8_workdir
    reference = engine_logits(fp32_and_ptq_engines[0], env["features"])
    if packed:
        engine = env["work"] / "packed_smoothed.engine"
        build_packed(env, engine, *smooth_options(env, env["work"] / "packed_smoothed_cache"))
        quantized = run_packed_engine(engine, env["features"], "cpu", chunk=20)
    else:
        engine = smoothed_engine[0]
        quantized = engine_logits(engine, env["features"])
    agreement = logits_agreement(reference, quantized, env["features"].input_mask)
    print(f"tiny random BERT, {'packed ' if packed else ''}PTQ INT8 --smooth 0.5 vs FP32:", agreement.as_text())
    assert agreement.cosine >= 0.99
    description = read_engine(engine.read_bytes())
    tensors = description["tensors"]
    # Every dense layer still reads a calibrated INT8 input: smoothing only moved scales around.
    convolutions = [layer for layer in description["layers"] if layer["kind"] == "convolution"]
    assert len(convolutions) == 4 * 2 + 1
    assert all(tensors[layer["inputs"][0]]["dynamic_range"] is not None for layer in convolutions)
    # Per layer, two residual factors: constants with one value per channel.
    factors = [layer for layer in description["layers"] if layer["kind"] == "constant" and layer["params"]["count"] > 1]
    assert len(factors) == 2 * 2


def test_smoothed_engine_lowers_every_dense_layer_to_an_int8_gemm(smoothed_engine):
    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(smoothed_engine[0].read_bytes())
    assert engine._plan.patterns().get("int8_gemm") == 4 * 2 + 1


def test_caches_of_other_smoothing_are_refused(int8_workdir, smoothed_engine, fp32_and_ptq_engines, capsys):
    """A cache's ranges are those of the tensors it was calibrated on: a smoothed cache without
    --smooth or with another ALPHA, or an unsmoothed cache with --smooth, is a one-line error; the same
    --smooth rebuilds from the kept scales without the SQuAD file."""
    env = int8_workdir
    _, smoothed_cache = smoothed_engine
    plain_cache = env["work"] / "cache"  # the unsmoothed PTQ engine's
    no_squad = ["-j", str(env["work"] / "no_such.json"), "-v", env["vocab"]]
    expect_clean_failure(env, capsys, ["-i", *no_squad, "-p", str(smoothed_cache)],
                         f"calibration cache {smoothed_cache} was calibrated with --smooth")
    expect_clean_failure(env, capsys, ["-i", *no_squad, "-p", str(smoothed_cache), "--smooth", "0.8"],
                         f"calibration cache {smoothed_cache} was calibrated with --smooth 0.5: pass that, or another -p")
    expect_clean_failure(env, capsys, ["-i", *no_squad, "-p", str(plain_cache), "--smooth", "0.5"],
                         f"calibration cache {plain_cache} was calibrated without --smooth")
    garbled = env["work"] / "bad_cache"
    (env["work"] / "bad_cache.smoothing.npz").write_bytes(b"not an npz archive")
    try:
        expect_clean_failure(env, capsys, ["-i", *no_squad, "-p", str(garbled), "--smooth", "0.5"],
                             f"{garbled}.smoothing.npz: not smoothing scales", cache=env["work"] / "bad_cache.smoothing.npz")
    finally:
        (env["work"] / "bad_cache.smoothing.npz").unlink()
    again = env["work"] / "smoothed_again.engine"
    build(env, again, "-i", *no_squad, "-p", str(smoothed_cache), "--smooth", "0.5")
    np.testing.assert_array_equal(engine_logits(again, env["features"]), engine_logits(smoothed_engine[0], env["features"]))


def test_bad_smoothing_options_fail_cleanly(int8_workdir, capsys):
    env = int8_workdir
    expect_clean_failure(env, capsys, ["--smooth", "0.5"], "--smooth needs --int8")
    expect_clean_failure(env, capsys, ["--smooth", "0.5"], "--smooth needs --int8", packed=True)
    for script in (builder, builder_varseqlen):
        args = script.parse_args(["--hf", "x", "-o", "x.engine", "-i", "--smooth", "0.5"])
        with pytest.raises(RuntimeError, match=r"^--smooth is only available on the portable engine"):
            check_8bit_options(args, "tensorrt", qat=False)
        with pytest.raises(RuntimeError, match="^--smooth needs post-training calibration"):
            check_8bit_options(args, "portable", qat=True)
        with pytest.raises(SystemExit):
            script.parse_args(["--hf", "x", "-o", "x.engine", "-i", "--smooth", "2"])
        assert "argument --smooth: takes a migration strength 0 < ALPHA <= 1, got '2'" in capsys.readouterr().err


def test_smoothing_keeps_every_fused_cuda_step(smoothed_engine, fp32_and_ptq_engines):
    """The CUDA plan of a smoothed engine fuses what the unsmoothed one fuses (decided on the graph,
    whatever the device): smoothing only adds the residual products as element-wise steps."""
    plain, smoothed = (load_graph(read_engine(path.read_bytes())) for path in (fp32_and_ptq_engines[1], smoothed_engine[0]))
    assert cuda_patterns(smoothed) == cuda_patterns(plain)
