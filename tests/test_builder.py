"""builder.py: command line, profiles, engines against HuggingFace, and bad input.

Engines are built on the portable backend (the TensorRT API on PyTorch) and run through
``helpers.runner``; the oracle is ``transformers.BertForQuestionAnswering`` in float64.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import checkpoints
import numpy as np
import pytest
import torch

import builder
from conftest import write_all_formats

REPO = Path(__file__).resolve().parents[1]
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2
CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]


@pytest.fixture(autouse=True)
def portable_device(monkeypatch):
    # builder --device writes DEMOBERT_DEVICE; monkeypatch puts the old value back afterwards.
    monkeypatch.setenv("DEMOBERT_DEVICE", "cpu")


def build(tmp_path, *args, name="bert.engine", expect_rc=0) -> Path:
    output = tmp_path / name
    rc = builder.main([*(str(a) for a in args), "-o", str(output), "--backend", "portable"])
    assert rc == expect_rc
    return output


def max_error(engine, model, batch, seq, device="cpu", seed=0) -> float:
    inputs = checkpoints.random_inputs(batch, seq, model.config.vocab_size, seed=seed)
    return float(np.abs(checkpoints.run_engine(engine, inputs, device) - checkpoints.hf_logits(model, inputs)).max())


# ---------------------------------------------------------------------------------------------
# Command line


def test_every_help_text_states_its_default():
    for action in builder.build_parser()._actions:
        if action.dest != "help":
            assert "(default: " in action.help and action.help.endswith(")"), action.dest


def test_defaults_and_option_names():
    args = builder.parse_args(["-o", "e.engine", "-c", "cfg"])
    assert (args.batch_size, args.sequence_length, args.workspace_size) == ([1], [128], 2500)
    assert (args.squad_json, args.calib_num, args.calib_path) == ("squad/dev-v1.1.json", 100, None)
    assert args.vocab_file == "./pre-trained_model/uncased_L-24_H-1024_A-16/vocab.txt"
    assert args.use_deprecated_plugins is True and args.backend == "auto"
    args = builder.parse_args(
        ["-o", "e", "-c", "c", "-b", "8", "-b", "2", "-s", "384", "-f", "-i", "-t", "-g", "-iln", "-imh", "-sp",
         "-tcf", "t.cache", "-w", "100", "-n", "7", "-p", "cal", "-j", "sq.json", "-v", "vocab.txt", "-pt", "m.pt",
         "-x", "m.onnx", "-m", "model.ckpt", "--verbose", "--distributive_independence", "--use-v3-plugins"]
    )
    assert args.batch_size == [8, 2] and args.sequence_length == [384]
    assert args.fp16 and args.int8 and args.strict and args.force_fc2_gemm and args.sparse
    assert args.force_int8_skipln and args.force_int8_multihead and args.verbose and args.distributive_independence
    assert (args.timing_cache_file, args.workspace_size, args.calib_num, args.calib_path) == ("t.cache", 100, 7, "cal")
    assert (args.pytorch, args.onnx, args.ckpt) == ("m.pt", "m.onnx", "model.ckpt")
    assert args.use_deprecated_plugins is False


def test_unknown_options_are_ignored_and_prefixes_accepted(capsys):
    args = builder.parse_args(["-o", "e", "-c", "c", "--fp32", "--sp", "--timing-cache", "x"])
    assert args.sparse and args.timing_cache_file == "x"
    assert capsys.readouterr().err.endswith(": warning: ignoring unknown arguments: --fp32\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["-o", "e"],  # neither -c nor --hf
        ["-o", "e", "-c", "c", "--use-v3-plugins", "--use-deprecated-plugins"],
        ["-c", "c"],  # -o is required
        ["-o", "e", "-c", "c", "-s", "0"],
    ],
)
def test_command_line_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as excinfo:
        builder.parse_args(argv)
    assert excinfo.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("parse", "argv", "message"),
    [
        ("builder", ["-w", "-5"], "-w/--workspace-size is in MiB and cannot be negative, got -5"),
        ("builder_varseqlen", ["-w", "-5"], "-w/--workspace-size is in MiB and cannot be negative, got -5"),
        ("builder", ["-n", "0"], "-n/--calib-num must be positive, got 0"),
    ],
)
def test_sizes_are_refused_before_any_work_in_their_own_unit(parse, argv, message, capsys):
    """-w -5 used to fail only after the weights were read, as a pool size of -5242880 (bytes)."""
    import builder_varseqlen

    parse_args = {"builder": builder.parse_args, "builder_varseqlen": builder_varseqlen.parse_args}[parse]
    with pytest.raises(SystemExit) as excinfo:
        parse_args(["-o", "e", "-c", "c", *argv])
    assert excinfo.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f": error: {message}")


def test_weight_source_precedence():
    def source(*argv):
        return builder.weight_source(builder.parse_args(["-o", "e", "-c", "c", *argv]))[0]

    assert source("-m", "a", "-pt", "b", "-x", "c", "--hf", "d") == "onnx"
    assert source("-m", "a", "-pt", "b", "--hf", "d") == "pytorch"
    assert source("-m", "a", "--hf", "d") == "ckpt"
    assert source("--hf", "d") == "hf"


def test_profile_shapes_follow_the_demo_order():
    assert builder.profile_shapes([1], [128], False) == []
    assert builder.profile_shapes([8, 1], [128], False) == [((1, 128), (1, 128)), ((1, 128), (8, 128))]
    assert builder.profile_shapes([4, 1], [128, 64], False) == [
        ((1, 64), (1, 64)), ((1, 128), (1, 128)), ((1, 64), (4, 64)), ((1, 128), (4, 128))
    ]
    assert builder.profile_shapes([2, 4], [64, 128], True) == [((1, 128), (4, 128))]
    assert builder.profile_shapes([3], [37], True) == [((1, 37), (3, 37))]


# ---------------------------------------------------------------------------------------------
# Engines against HuggingFace


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "sizes",
    [dict(hidden=48, heads=3, layers=2, intermediate=37), dict(hidden=40, heads=5, layers=1, intermediate=37),
     dict(hidden=24, heads=2, layers=3, intermediate=37)],
    ids=["h48n3l2", "h40n5l1", "h24n2l3"],
)
def test_fp32_engine_matches_hf(tmp_path, device, sizes):
    model = checkpoints.tiny_qa_model(**sizes, seed=sizes["layers"])
    folder = checkpoints.write_hf_folder(model, tmp_path / "hf")
    engine = build(tmp_path, "--hf", folder, "-b", 1, "-b", 3, "-s", 7, "-s", 37, "-s", 128)
    for batch in (1, 3):
        for seq in (7, 37, 128):
            assert max_error(engine, model, batch, seq, device, seed=batch * seq) <= FP32_TOLERANCE, (batch, seq)


def test_fp32_engine_at_384_with_v3_plugins(tmp_path, tiny_model, tiny_files):
    engine = build(tmp_path, "--hf", tiny_files["hf"], "-b", 3, "-s", 384, "--use-v3-plugins")
    assert max_error(engine, tiny_model, 3, 384) <= FP32_TOLERANCE


@pytest.mark.skipif(not CUDA, reason="FP16 engines run on CUDA only (no CUDA device here)")
def test_fp16_engine_matches_hf_on_cuda(tmp_path, tiny_model, tiny_files, monkeypatch):
    monkeypatch.setenv("DEMOBERT_DEVICE", "cuda")
    engine = build(tmp_path, "--hf", tiny_files["hf"], "-b", 1, "-b", 3, "-s", 37, "-s", 128, "-f")
    for batch in (1, 3):
        for seq in (37, 128):
            assert max_error(engine, tiny_model, batch, seq, "cuda") <= FP16_TOLERANCE, (batch, seq)


@pytest.mark.parametrize("kind", ["ckpt", "onnx", "pytorch"])
def test_every_source_format_builds_the_same_model(tmp_path, tiny_model, tiny_files, kind):
    flag = {"ckpt": "-m", "onnx": "-x", "pytorch": "-pt"}[kind]
    engine = build(tmp_path, flag, tiny_files[kind], "-c", tiny_files["config_dir"], "-b", 2, "-s", 37)
    assert max_error(engine, tiny_model, 2, 37) <= FP32_TOLERANCE


def test_minilm_in_every_format_agrees_with_hf(tmp_path):
    model = checkpoints.minilm_qa_model()
    files = write_all_formats(model, tmp_path / "minilm")
    sources = {"hf": ["--hf", files["hf"]], "ckpt": ["-m", files["ckpt"]], "onnx": ["-x", files["onnx"]],
               "pytorch": ["-pt", files["pytorch"]]}
    inputs = checkpoints.random_inputs(2, 48, model.config.vocab_size, seed=5)
    expected = checkpoints.hf_logits(model, inputs)
    logits = {}
    for kind, source in sources.items():
        engine = build(tmp_path, *source, "-c", files["config_dir"], "-b", 2, "-s", 48, name=f"{kind}.engine")
        logits[kind] = checkpoints.run_engine(engine, inputs)
    for kind, value in logits.items():
        assert np.abs(value - expected).max() <= FP32_TOLERANCE, kind
        np.testing.assert_array_equal(value, logits["hf"], err_msg=kind)


# ---------------------------------------------------------------------------------------------
# Profiles, timing cache, log


def test_engine_profiles_and_out_of_profile_shapes(tmp_path, tiny_files):
    from helpers.runner import EngineRunner

    engine = build(tmp_path, "--hf", tiny_files["hf"], "-b", 4, "-b", 1, "-s", 64, "-s", 32)
    runner = EngineRunner(engine, device="cpu")
    expected = builder.profile_shapes([4, 1], [64, 32], False)
    assert runner.engine.num_optimization_profiles == len(expected)
    for index, (low, high) in enumerate(expected):
        for name in builder.INPUT_NAMES:
            assert [tuple(s) for s in runner.engine.get_tensor_profile_shape(name, index)] == [low, high, high]
    assert [runner.engine.get_tensor_name(i) for i in range(runner.engine.num_io_tensors)] == [
        "input_ids", "segment_ids", "input_mask", "logits_out"
    ]
    context = runner.context
    context.set_optimization_profile_async(3, 0)  # (1..4, 64)
    assert context.set_input_shape("input_ids", (4, 64)) is True
    assert context.set_input_shape("input_ids", (5, 64)) is False
    assert context.set_input_shape("input_ids", (4, 32)) is False


def test_distributive_independence_builds_one_profile(tmp_path, tiny_model, tiny_files):
    from helpers.runner import EngineRunner

    engine = build(tmp_path, "--hf", tiny_files["hf"], "-b", 2, "-b", 3, "-s", 16, "-s", 24,
                   "--distributive_independence")
    runner = EngineRunner(engine, device="cpu")
    assert runner.engine.num_optimization_profiles == 1
    assert [tuple(s) for s in runner.engine.get_tensor_profile_shape("input_mask", 0)] == [(1, 24), (3, 24), (3, 24)]
    assert max_error(engine, tiny_model, 2, 24) <= FP32_TOLERANCE


def test_single_batch_size_above_one_with_several_sequence_lengths(tmp_path, tiny_model, tiny_files):
    # The original declares batch 3 static here, and TensorRT rejects the profiles' min batch of 1.
    engine = build(tmp_path, "--hf", tiny_files["hf"], "-b", 3, "-s", 16, "-s", 24)
    for batch, seq in ((3, 16), (2, 24)):
        assert max_error(engine, tiny_model, batch, seq) <= FP32_TOLERANCE


def test_log_lines_and_timing_cache(tmp_path, tiny_files, capfd):
    cache = tmp_path / "timing.cache"
    build(tmp_path, "--hf", tiny_files["hf"], "-s", 16, "-tcf", cache, "-sp")
    log = capfd.readouterr()
    lines = [line for line in (log.out + log.err).splitlines() if line.strip()]
    assert "Using backend: portable" in lines[0]
    text = "\n".join(lines)
    for fragment in (f"Using configuration file: {tiny_files['hf'] / 'config.json'}", "Found 31 entries in weight map",
                     "Setting sparsity flag on builder_config.", "build engine in ", f"Saving Engine to {tmp_path}",
                     "Done."):
        assert fragment in text
    assert cache.is_file() and cache.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert.engine", "timing.cache"]


def test_an_unusable_timing_cache_is_replaced_with_a_warning(tmp_path, tiny_files, capfd):
    """TensorRT refuses such a blob; the build goes on without it and writes a fresh cache there
    (it used to crash on None.serialize and leave no engine)."""
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"garbage, or a cache of another TensorRT version")
    build(tmp_path, "--hf", tiny_files["hf"], "-s", 16, "-tcf", cache)
    err = capfd.readouterr().err
    assert f"[W] timing cache {cache} is not usable (see the error above); building without it, and a new one" in err
    assert "Traceback" not in err and (tmp_path / "bert.engine").is_file()
    import helpers.portable as trt

    config = trt.Builder(trt.Logger(trt.Logger.ERROR)).create_builder_config()
    assert config.create_timing_cache(cache.read_bytes()) is not None  # what is there now is a cache


# ---------------------------------------------------------------------------------------------
# Bad input: one-line error, exit status 1, no engine file


def assert_failed_cleanly(tmp_path, capfd, *fragments):
    err = capfd.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)
    for fragment in fragments:
        assert fragment in err[-1], err[-1]
    assert not list(tmp_path.rglob("*.engine*"))


def test_no_weight_source(tmp_path, tiny_files, capfd):
    build(tmp_path, "-c", tiny_files["config_dir"], expect_rc=1)
    assert_failed_cleanly(tmp_path, capfd, builder.NO_WEIGHTS_MESSAGE)


def test_missing_bert_config(tmp_path, tiny_files, capfd):
    build(tmp_path, "-x", tiny_files["onnx"], "-c", tmp_path, expect_rc=1)
    assert_failed_cleanly(tmp_path, capfd, "configuration file not found", "bert_config.json")


def test_config_disagrees_with_weights(tmp_path, tiny_files, capfd):
    data = json.loads((tiny_files["config_dir"] / "bert_config.json").read_text())
    data["intermediate_size"] = 64
    (tmp_path / "bert_config.json").write_text(json.dumps(data))
    build(tmp_path, "-pt", tiny_files["pytorch"], "-c", tmp_path, expect_rc=1)
    assert_failed_cleanly(tmp_path, capfd, "'l0_intermediate_dense_kernel'", "(37, 48)", "(64, 48)")


def test_unknown_tensor_name(tmp_path, tiny_model, tiny_files, capfd):
    state = tiny_model.state_dict()
    state["bert.encoder.layer.0.attention.self.distance_embedding.weight"] = torch.zeros(4, 3)
    torch.save({"model": state}, tmp_path / "extra.pt")
    build(tmp_path, "-pt", tmp_path / "extra.pt", "-c", tiny_files["config_dir"], expect_rc=1)
    assert_failed_cleanly(tmp_path, capfd, "unknown tensor 'bert.encoder.layer.0.attention.self.distance_embedding.weight'")


@pytest.mark.parametrize(("option", "what"), [("-pt", "PyTorch checkpoint"), ("-x", "ONNX model")])
def test_weight_path_that_is_a_directory_is_not_reported_missing(tmp_path, tiny_files, capfd, option, what):
    build(tmp_path, option, tmp_path, "-c", tiny_files["config_dir"], expect_rc=1)
    assert_failed_cleanly(tmp_path, capfd, f"error: {what} path is a directory, not a file: {tmp_path}")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("script", ["builder", "builder_varseqlen"])
def test_weights_that_are_not_finite(tmp_path, tiny_model, tiny_files, capfd, value, script):
    """Such an engine used to build and answer every question with probability NaN."""
    import builder_varseqlen

    state = tiny_model.state_dict()
    state["bert.encoder.layer.1.output.dense.weight"] = state["bert.encoder.layer.1.output.dense.weight"].clone()
    state["bert.encoder.layer.1.output.dense.weight"][3, :2] = value
    torch.save({"model": state}, tmp_path / "bad.pt")
    main = {"builder": builder.main, "builder_varseqlen": builder_varseqlen.main}[script]
    argv = ["-pt", str(tmp_path / "bad.pt"), "-c", str(tiny_files["config_dir"]), "-o", str(tmp_path / "bert.engine"), "--backend", "portable"]
    assert main(argv) == 1
    assert_failed_cleanly(tmp_path, capfd, "weight 'l1_output_dense_kernel' holds 2 NaN or infinite value(s) of")


@pytest.mark.parametrize("kind", ["onnx", "pytorch", "hf"])
def test_corrupt_weight_files(tmp_path, tiny_files, capfd, kind):
    if kind == "hf":
        source = tmp_path / "hf"
        shutil.copytree(tiny_files["hf"], source)
        (source / "model.safetensors").write_bytes(b"\xff" * 64)
        argv = ["--hf", source]
    else:
        source = tmp_path / f"broken.{kind}"
        source.write_bytes(Path(tiny_files[kind]).read_bytes()[:300])
        argv = ["-x" if kind == "onnx" else "-pt", source, "-c", tiny_files["config_dir"]]
    build(tmp_path, *argv, expect_rc=1)
    assert_failed_cleanly(tmp_path, capfd, "cannot read")


def test_output_folder_missing(tmp_path, tiny_files, capfd):
    rc = builder.main(["--hf", str(tiny_files["hf"]), "-o", str(tmp_path / "no" / "such" / "x.engine"),
                       "--backend", "portable"])
    assert rc == 1
    assert_failed_cleanly(tmp_path, capfd, "output folder does not exist")


@pytest.mark.parametrize(
    "flag, message",
    [("-imh", "--force-int8-multihead option is only supported on Turing+ GPU."),
     ("-iln", "--force-int8-skipln option is only supported on Xavier+ GPU.")],
)
def test_int8_kernel_options_need_a_gpu(tmp_path, tiny_files, capfd, flag, message):
    build(tmp_path, "--hf", tiny_files["hf"], "-i", flag, "--device", "cpu", expect_rc=1)
    assert_failed_cleanly(tmp_path, capfd, message)


def test_command_line_failure_in_a_subprocess(tmp_path):
    output = tmp_path / "x.engine"
    result = subprocess.run(
        [sys.executable, "builder.py", "-o", str(output), "-c", str(tmp_path), "-x", str(tmp_path / "missing.onnx"),
         "--backend", "portable"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: configuration file not found: {tmp_path / 'bert_config.json'}"
    assert not output.exists()


# ---------------------------------------------------------------------------------------------
# Network structure and INT8 annotations (docs/SPEC.md "Layer graph", "Precision settings", "INT8"),
# inspected before any build


def network_tensors(config, weights):
    """{tensor name: tensor} of the network builder.py defines, and the network itself."""
    from helpers.backend import select_backend, trt

    select_backend("portable")
    logger = trt.Logger(trt.Logger.ERROR)
    trt.init_libnvinfer_plugins(logger, "")
    trt_builder = trt.Builder(logger)
    network = trt_builder.create_network(0)
    builder.populate_network(trt_builder, network, trt_builder.create_builder_config(), config, weights, [1], [16])
    tensors = {}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for output in range(layer.num_outputs):
            tensors[layer.get_output(output).name] = layer.get_output(output)
    return tensors, network


def qat_weights(model, tmp_path):
    import bert_weights as bw

    names = checkpoints.qat_amax_names(model.config.num_hidden_layers)
    amax = {name: 2.0 + index for index, name in enumerate(names)}
    for layer in range(model.config.num_hidden_layers):  # one input range for the fused QKV
        for projection in ("key", "value"):
            amax[f"bert.encoder.layer.{layer}.attention.self.{projection}._input_quantizer._amax"] = amax[
                f"bert.encoder.layer.{layer}.attention.self.query._input_quantizer._amax"]
    path = checkpoints.write_onnx_model(model, tmp_path / "qat.onnx", amax)
    c = model.config
    config = bw.BertConfig(c.num_attention_heads, c.hidden_size, c.intermediate_size, c.num_hidden_layers,
                           use_int8=True, use_qat=True)
    return config, bw.load_onnx_weights_and_quant(str(path), config), amax


def test_network_tensor_names_and_gelu_chain(tiny_model, tiny_files):
    import bert_weights as bw
    from helpers.backend import trt

    config = bw.load_hf_config(str(tiny_files["hf"]))
    tensors, network = network_tensors(config, bw.load_hf_weights(str(tiny_files["hf"]), config))
    expected = ["embeddings_output", "logits_out"] + [
        f"l{i}_{name}" for i in range(2)
        for name in ("attention_qkv_mult", "attention_context_layer", "gelu", "output_dense", "output_reshape")
    ]
    assert set(expected) <= set(tensors)
    assert [network.get_output(i).name for i in range(network.num_outputs)] == ["logits_out"]
    assert tuple(tensors["logits_out"].shape) == (1, 16, 2, 1, 1)
    assert tuple(tensors["l0_attention_qkv_mult"].shape) == (16, 1, 3 * 48, 1, 1)
    assert tuple(tensors["embeddings_output"].shape) == (16, 1, 48, 1, 1)
    constants = [network.get_layer(i) for i in range(network.num_layers)
                 if network.get_layer(i).type == trt.LayerType.CONSTANT]
    assert len(constants) == 5 * 2  # five GELU constants per layer, no dangling head constant
    assert {tuple(layer.get_output(0).shape) for layer in constants} == {(1, 1, 1, 1, 1)}
    values = sorted(float(np.asarray(layer.weights).reshape(-1)[0]) for layer in constants[:5])
    assert values == sorted(float(np.float32(v)) for v in (3.0, 0.044715, 0.79788456080286535587989211986876, 1.0, 0.5))


def test_qat_dynamic_ranges(tiny_model, tmp_path):
    config, weights, amax = qat_weights(tiny_model, tmp_path)
    tensors, _ = network_tensors(config, weights)

    def check(tensor_name, value):
        assert tensors[tensor_name].dynamic_range == (-value, value), tensor_name

    for i in range(2):
        p = f"bert.encoder.layer.{i}."
        check(f"l{i}_attention_qkv_mult", max(amax[p + f"attention.self.matmul_{m}_input_quantizer._amax"] for m in "qkv"))
        check(f"l{i}_attention_context_layer", amax[p + "attention.output.dense._input_quantizer._amax"])
        check(f"l{i}_gelu", amax[p + "output.dense._input_quantizer._amax"])
        check(f"l{i}_output_dense", amax[p + "output.add_local_input_quantizer._amax"])
    check("embeddings_output", amax["bert.encoder.layer.0.attention.self.query._input_quantizer._amax"])
    check("l0_output_reshape", amax["bert.encoder.layer.1.attention.self.query._input_quantizer._amax"])
    check("l1_output_reshape", amax["bert.encoder.final_input_quantizer._amax"])


def test_qat_model_with_unequal_qkv_input_ranges_is_refused(tiny_model, tmp_path):
    import bert_weights as bw

    config, weights, _ = qat_weights(tiny_model, tmp_path)
    weights["l1_attention_self_value_input_amax"] = weights["l1_attention_self_value_input_amax"] + 1
    with pytest.raises(bw.WeightLoadError, match="l1_attention_self_value_input_amax"):
        network_tensors(config, weights)
    del weights["l0_output_add_local_input_quantizer_amax"]
    with pytest.raises(bw.WeightLoadError, match="has no 'l0_output_add_local_input_quantizer_amax' entry"):
        network_tensors(config, weights)


def test_ptq_clips_gelu_and_keeps_dense_outputs_unquantized(tiny_model, tiny_files):
    import bert_weights as bw
    from helpers.backend import trt

    config = bw.load_hf_config(str(tiny_files["hf"]), use_int8=True, use_fp16=True)
    tensors, network = network_tensors(config, bw.load_hf_weights(str(tiny_files["hf"]), config))
    assert tensors["l1_gelu"].dynamic_range == (-10.0, 10.0)
    dense_outputs = [network.get_layer(i) for i in range(network.num_layers)
                     if network.get_layer(i).get_output(0).name in ("l0_output_dense", "l1_output_dense")]
    assert [layer.get_output_type(0) for layer in dense_outputs] == [trt.DataType.HALF] * 2


def test_ptq_on_the_portable_engine_needs_its_calibration_data(tmp_path, tiny_files, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build(tmp_path, "--hf", tiny_files["hf"], "-s", 16, "-i", "-j", tmp_path / "no_squad.json", expect_rc=1)
    assert_failed_cleanly(tmp_path, capfd, "no_squad.json", "cannot read file")
