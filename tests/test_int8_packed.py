"""INT8 engines of builder_varseqlen.py on the portable engine (CPU), from the tiny random BERT of
``engines.int8_workdir``: QAT ranges on the packed and interleaved networks, and post-training
calibration on packed batches against the FP32 packed engine, the padded PTQ engine with the same
ranges, and bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

import builder
import builder_varseqlen
from bench.int8_accuracy import activation_amax, logits_agreement, packed_batch, run_packed_engine
from checkpoints import with_padding_tokens, write_bert_config, write_onnx_model
from engines import (
    build,
    build_packed,
    engine_logits,
    expect_clean_failure,
    ptq_options,
)
from engines import INT8_SEQ as SEQ
from helpers.portable.calibration import CalibrationAlgoType, parse_calibration_table, write_calibration_table
from helpers.portable.engine_file import read_engine
from helpers.runner import EngineRunner


@pytest.mark.parametrize("layout", [(), ("-il",), ("-f",)])
def test_varseqlen_qat_int8_tracks_fp32(int8_workdir, layout):
    """builder_varseqlen.py -i with QAT ranges: packed (FP32 and -f FP16 around the INT8 layers) and
    interleaved (-il) networks, on the packed hand-made features."""
    env = int8_workdir
    onnx_path = write_onnx_model(env["model"], env["work"] / "qat_varseqlen.onnx", activation_amax(env["model"], env["features"]))
    config_dir = write_bert_config(env["model"], env["work"] / "cfg_varseqlen")
    features = env["features"]
    lengths = features.input_mask.sum(axis=1)
    batch = packed_batch(features, slice(None))
    logits = []
    for name, options in (("fp32", ()), ("int8", ("-i", *layout))):
        engine = env["work"] / f"varseqlen_{name}{''.join(layout)}.engine"
        argv = ["-x", str(onnx_path), "-c", str(config_dir), "-o", str(engine), "-b", str(len(lengths)), "-s", str(SEQ),
                "--backend", "portable", "--device", "cpu", *options]
        assert builder_varseqlen.main(argv) == 0
        runner = EngineRunner(engine, device="cpu")
        runner.activate(len(lengths), SEQ, total_tokens=len(batch["input_ids"]))
        logits.append(runner.infer(batch).reshape(2, -1))
    reference, quantized = (l.astype(np.float64).ravel() for l in logits)
    cosine = reference @ quantized / (np.linalg.norm(reference) * np.linalg.norm(quantized))
    print(f"tiny random BERT, varseqlen QAT INT8 {' '.join(layout)} vs FP32: cosine {cosine:.5f}")
    assert cosine >= 0.99
    assert not np.allclose(reference, quantized, rtol=0, atol=1e-5)


PACKED_LAYOUTS = {"int8": (), "int8-il": ("-il",), "int8-f": ("-f",), "fp8": ("--fp8",)}


@pytest.fixture(scope="module")
def packed_ptq_engines(int8_workdir):
    """The packed FP32 engine and PTQ engines of every layout and their logits: one calibration cache
    per network layout (the interleaved network transposes the embeddings, which moves the positions
    that name its unnamed tensors), each from all 20 questions in one packed batch of their 1379
    tokens (-b 20)."""
    env = int8_workdir
    engines = {"fp32": env["work"] / "packed_fp32.engine"}
    build_packed(env, engines["fp32"])
    for name, layout in PACKED_LAYOUTS.items():
        engines[name] = env["work"] / f"packed_{name}.engine"
        cache = env["work"] / ("packed_cache_il" if "-il" in layout else "packed_cache")
        build_packed(env, engines[name], *ptq_options(env, cache), *layout)
    return {name: (path, run_packed_engine(path, env["features"], "cpu", chunk=20)) for name, path in engines.items()}


@pytest.mark.parametrize("name", list(PACKED_LAYOUTS))
def test_packed_ptq_engine_calibrates_and_tracks_the_fp32_engine(int8_workdir, packed_ptq_engines, name):
    env = int8_workdir
    cache = env["work"] / ("packed_cache_il" if name == "int8-il" else "packed_cache")
    algorithm, table = parse_calibration_table(cache.read_bytes())
    assert algorithm == "LegacyCalibration"
    assert {"embeddings_output", "l0_attention_qkv_mult", "l0_attention_context_layer", "l1_output_reshape"} <= set(table)
    path, quantized = packed_ptq_engines[name]
    description = read_engine(path.read_bytes())
    ranges = {t["name"]: t["dynamic_range"] for t in description["tensors"]}
    assert all(description["tensors"][slot]["dynamic_range"] is not None for slot in quantized_roles(description))
    assert ranges["l0_gelu"] == [-10.0, 10.0] and ranges["l1_gelu"] == [-10.0, 10.0]  # GELU10, as builder.py
    assert ranges["l0_attention_qkv_mult"][1] == pytest.approx(table["l0_attention_qkv_mult"])
    reference = packed_ptq_engines["fp32"][1]
    agreement = logits_agreement(reference, quantized, env["features"].input_mask)
    print(f"tiny random BERT, packed PTQ {name} vs FP32:", agreement.as_text())
    # FP8 E4M3 has 3 mantissa bits: its GEMMs round more than INT8's with these ranges.
    assert agreement.cosine >= (0.98 if name == "fp8" else 0.99)
    assert not np.allclose(reference, quantized, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(PACKED_LAYOUTS))
def test_packed_ptq_engines_skip_padding_tokens_and_empty_sequences(int8_workdir, packed_ptq_engines, name):
    """What fills a CUDA graph's shape (empty sequences, tokens past the last sequence) leaves the
    real tokens' logits as they are alone, on every packed 8-bit network."""
    batch = packed_batch(int8_workdir["features"], slice(0, 5))
    total = len(batch["input_ids"])
    runner = EngineRunner(packed_ptq_engines[name][0], device="cpu")
    runner.activate(5, SEQ, total_tokens=total)
    alone = runner.infer(batch)
    padded = with_padding_tokens(batch, 20, total + 23)
    runner.activate(20, SEQ, total_tokens=total + 23)
    logits = runner.infer(padded, padding=True).reshape(2, -1)[:, :total]
    np.testing.assert_allclose(logits, alone.reshape(2, -1), rtol=1e-5, atol=1e-5)


def test_packed_fp8_alone_is_int8_with_fp8_gemms(int8_workdir, packed_ptq_engines):
    """builder_varseqlen.py --fp8 without --int8: the --int8 --fp8 engine (same cache, same logits)."""
    env = int8_workdir
    engine = env["work"] / "packed_fp8_alone.engine"
    options = [option for option in ptq_options(env, env["work"] / "packed_cache") if option != "-i"]
    build_packed(env, engine, *options, "--fp8")
    logits = run_packed_engine(engine, env["features"], "cpu", chunk=20)
    assert np.array_equal(logits, packed_ptq_engines["fp8"][1])


def quantized_roles(description: dict) -> list[int]:
    """The slots of the tensors an INT8 engine quantizes, in the order of the network: each dense
    layer's input, each attention's QKV and context, each skip-LayerNorm's inputs and output."""
    slots = []
    for layer in description["layers"]:
        if layer["kind"] == "convolution":
            slots.append(layer["inputs"][0])
        elif layer["kind"] == "plugin" and "QKVToContext" in layer["params"]["plugin"]:
            slots += [layer["inputs"][0], layer["outputs"][0]]
        elif layer["kind"] == "plugin" and "SkipLayerNorm" in layer["params"]["plugin"]:
            slots += [*layer["inputs"][:2], layer["outputs"][0]]
    return slots


def test_packed_and_padded_ptq_engines_agree_with_the_same_ranges(int8_workdir, packed_ptq_engines, fp32_and_ptq_engines):
    """The packed PTQ engine (INT8 attention and skip-LayerNorm, as -imh -iln) and the padded one built
    with its ranges: the padded network names two tensors of each layer by position, so the table is
    written in the padded network's names, tensor by tensor of the same role."""
    env = int8_workdir
    packed = read_engine(packed_ptq_engines["int8"][0].read_bytes())
    padded = read_engine(fp32_and_ptq_engines[0].read_bytes())
    pairs = list(zip(quantized_roles(packed), quantized_roles(padded), strict=True))
    table = {padded["tensors"][b]["name"]: packed["tensors"][a]["dynamic_range"][1] for a, b in pairs}
    assert all(value > 0 for value in table.values())  # every tensor the packed engine quantizes has its range
    cache = env["work"] / "packed_ranges_for_padded"
    cache.write_bytes(write_calibration_table(table, CalibrationAlgoType.LEGACY_CALIBRATION))
    engine = env["work"] / "padded_with_packed_ranges.engine"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builder, "compute_capability", lambda backend: 90)
        build(env, engine, "-i", "-imh", "-iln", "-j", str(env["work"] / "no_such.json"), "-v", env["vocab"], "-p", str(cache))
    ranges = {t["name"]: t["dynamic_range"] for t in read_engine(engine.read_bytes())["tensors"]}
    assert all(ranges[name] == pytest.approx([-value, value]) for name, value in table.items())
    mask = env["features"].input_mask
    padded_logits = engine_logits(engine, env["features"])
    agreement = logits_agreement(padded_logits, packed_ptq_engines["int8"][1], mask)
    print("tiny random BERT, packed vs padded PTQ INT8 with the same ranges:", agreement.as_text())
    # Not bit-equal: the packed network's embeddings are FP16 (the original's output_fp16 for INT8),
    # which moves a few INT8 codes by one step.
    assert agreement.cosine >= 0.99
    assert logits_agreement(engine_logits(fp32_and_ptq_engines[0], env["features"]), padded_logits, mask).cosine >= 0.99


def test_bad_packed_ptq_options_fail_cleanly(int8_workdir, capsys):
    env = int8_workdir
    missing = env["work"] / "missing.json"
    cache = ["-p", str(env["work"] / "bad_packed_cache")]
    expect_clean_failure(env, capsys, ["-i", "-j", str(missing), "-v", env["vocab"], *cache], f"{missing}: cannot read file",
                         packed=True)
    expect_clean_failure(env, capsys, [*ptq_options(env, env["work"] / "bad_packed_cache", calib_num=21)],
                         "has 20 questions, fewer than the 21", packed=True)
