"""builder_varseqlen.py, inference_varseqlen.py, perf_varseqlen.py and the interleaved plugins.

Oracles: HuggingFace BertForQuestionAnswering run on each sequence alone, and the padded engine of
builder.py on the same weights.  The tiny model (conftest ``tiny_model``: E=48, 3 heads of 16, 2
layers, 512 positions) keeps the CPU cost small even for 512-token sequences.
"""

from __future__ import annotations

import collections
import json
import pickle

import numpy as np
import pytest
import torch

import builder
import builder_varseqlen
import checkpoints
import engines
import helpers.data_processing as dp
import helpers.tokenization as tokenization
import inference_varseqlen
import perf_varseqlen
from helpers.backend import select_backend, trt
from helpers.cli import RunnerError
from helpers.portable import ops
from helpers.portable import plugins_interleaved as interleaved
from helpers.runner import EngineRunner, NoProfileError
from helpers.squad_lengths import squad_like_lengths
from varseqlen_network import VarSeqLenNetwork, batch_profiles

MIX = (1, 2, 17, 64, 129, 384, 512)
MAX_SEQ = 512
MAX_BATCH = 4


# ---------------------------------------------------------------------------------------------
# Helpers


def run_packed(runner, batch: dict[str, np.ndarray], max_seq: int = MAX_SEQ) -> np.ndarray:
    runner.activate(len(batch["cu_seqlens"]) - 1, max_seq, total_tokens=len(batch["input_ids"]))
    return runner.infer(batch).reshape(2, -1)


def build_varseqlen(files, engine, *extra: str) -> str:
    argv = ["--hf", str(files["hf"]), "-o", str(engine), "--backend", "portable", "--device", "cpu", *extra]
    assert builder_varseqlen.main(argv) == 0
    return str(engine)


@pytest.fixture(scope="module")
def model_files(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("varseqlen")
    return {"hf": checkpoints.write_hf_folder(tiny_model, folder / "hf"), "config_dir": checkpoints.write_bert_config(tiny_model, folder), "folder": folder}


@pytest.fixture(scope="module")
def packed_runner(model_files):
    engine = build_varseqlen(model_files, model_files["folder"] / "packed.engine", "-b", str(MAX_BATCH), "-s", str(MAX_SEQ))
    return EngineRunner(engine, device="cpu")


@pytest.fixture(scope="module")
def padded_runner(model_files):
    engine = model_files["folder"] / "padded.engine"
    argv = ["--hf", str(model_files["hf"]), "-o", str(engine), "-b", str(MAX_BATCH), "-s", str(MAX_SEQ),
            "--backend", "portable", "--device", "cpu"]
    assert builder.main(argv) == 0
    runner = EngineRunner(engine, device="cpu")
    runner.activate(MAX_BATCH, MAX_SEQ)
    return runner


# ---------------------------------------------------------------------------------------------
# Packed engine against HF and against the padded engine


def random_mixes(count: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    mixes = [[int(n) for n in rng.choice(MIX, size=rng.integers(1, MAX_BATCH + 1))] for _ in range(count)]
    return mixes + [[512, 1, 384, 2], [17]]  # every length appears at least once


def test_packed_fp32_matches_hf_and_padded_engine(tiny_model, packed_runner, padded_runner):
    vocab = tiny_model.config.vocab_size
    for seed, lengths in enumerate(random_mixes(3, seed=5)):
        batch = checkpoints.packed_batch(lengths, vocab, seed)
        packed = run_packed(packed_runner, batch)
        np.testing.assert_allclose(packed, checkpoints.hf_packed_logits(tiny_model, batch), atol=1e-4, rtol=1e-4, err_msg=str(lengths))
        padded = padded_runner.infer(checkpoints.padded_batch(batch, MAX_BATCH, MAX_SEQ)).reshape(MAX_BATCH, MAX_SEQ, 2)
        valid = np.concatenate([padded[row, :n] for row, n in enumerate(lengths)])  # [T, 2]
        np.testing.assert_allclose(packed, valid.T, atol=1e-4, rtol=1e-4, err_msg=str(lengths))


def assert_padding_is_skipped(runner, batch: dict[str, np.ndarray], tolerance: float) -> None:
    """Empty sequences and tokens past the last one (``infer(..., padding=True)``) leave the real
    tokens' logits as they are alone."""
    alone = run_packed(runner, batch)
    padded = checkpoints.with_padding_tokens(batch, MAX_BATCH, len(batch["input_ids"]) + 37)
    runner.activate(MAX_BATCH, MAX_SEQ, total_tokens=len(padded["input_ids"]))
    logits = runner.infer(padded, padding=True).reshape(2, -1)[:, : alone.shape[1]]
    np.testing.assert_allclose(logits, alone, atol=tolerance, rtol=tolerance)


def test_padding_tokens_and_empty_sequences_are_skipped(tiny_model, packed_runner):
    batch = checkpoints.packed_batch([5, 17], tiny_model.config.vocab_size, 3)
    assert_padding_is_skipped(packed_runner, batch, 1e-5)
    padded = checkpoints.with_padding_tokens(batch, MAX_BATCH, 30)
    packed_runner.activate(MAX_BATCH, MAX_SEQ, total_tokens=30)
    with pytest.raises(RunnerError, match="strictly increasing"):
        packed_runner.copy_inputs(padded)
    with pytest.raises(RunnerError, match="non-decreasing"):
        packed_runner.copy_inputs(dict(padded, cu_seqlens=np.array([0, 5, 3, 22, 22], np.int32)), padding=True)
    with pytest.raises(RunnerError, match="ends at 31, but the batch has 30 tokens"):
        packed_runner.copy_inputs(dict(padded, cu_seqlens=np.array([0, 5, 31, 31, 31], np.int32)), padding=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FP16 engines run on CUDA only")
def test_packed_fp16_matches_hf_on_cuda(tiny_model, model_files):
    engine = model_files["folder"] / "packed_fp16.engine"
    argv = ["--hf", str(model_files["hf"]), "-o", str(engine), "-b", str(MAX_BATCH), "-s", str(MAX_SEQ), "--fp16",
            "--backend", "portable", "--device", "cuda"]
    assert builder_varseqlen.main(argv) == 0
    runner = EngineRunner(engine, device="cuda")
    for seed, lengths in enumerate(random_mixes(3, seed=9)):
        batch = checkpoints.packed_batch(lengths, tiny_model.config.vocab_size, seed)
        np.testing.assert_allclose(run_packed(runner, batch), checkpoints.hf_packed_logits(tiny_model, batch), atol=2e-2, rtol=2e-2)
    assert_padding_is_skipped(runner, batch, 1e-3)


def test_profiles_follow_the_b_order_and_cover_smaller_batches(tiny_model, model_files):
    seq = 64
    cache = model_files["folder"] / "timing.cache"
    # Also the IPluginV3 versions (emb v4, QKV v5, skipLN v6) and a timing cache.
    engine = build_varseqlen(model_files, model_files["folder"] / "profiles.engine", "-b", "4", "-b", "1", "-s", str(seq),
                             "--use-v3-plugins", "-tcf", str(cache))
    assert cache.is_file()
    runner = EngineRunner(engine, device="cpu")
    assert runner.engine.num_optimization_profiles == 2
    expected = {  # (min, opt, max) per profile, in the -b order
        "input_ids": [((1,), (4 * seq,), (4 * seq,)), ((1,), (seq,), (seq,))],
        "cu_seqlens": [((1,), (5,), (5,)), ((1,), (2,), (2,))],
        "max_seqlen": [((1,), (seq,), (seq,)), ((1,), (seq,), (seq,))],
    }
    for name, shapes in expected.items():
        for profile, shape in enumerate(shapes):
            assert tuple(tuple(s) for s in runner.engine.get_tensor_profile_shape(name, profile)) == shape
    vocab = tiny_model.config.vocab_size
    for size in range(1, 5):
        batch = checkpoints.packed_batch([seq - 3 * i for i in range(size)], vocab, size)
        np.testing.assert_allclose(run_packed(runner, batch, seq), checkpoints.hf_packed_logits(tiny_model, batch), atol=1e-4, rtol=1e-4)
    with pytest.raises(NoProfileError):
        run_packed(runner, checkpoints.packed_batch([3] * 5, vocab, 0), seq)


def test_gelu_is_pinned_to_fp32_with_rank4_constants(model_files):
    select_backend("portable")

    logger = trt.Logger(trt.Logger.ERROR)
    trt.init_libnvinfer_plugins(logger, "")
    config = builder_varseqlen.load_config(builder_varseqlen.parse_args(["--hf", str(model_files["hf"]), "-o", "x"]), logger)
    weights = builder_varseqlen.load_weights("hf", str(model_files["hf"]), config, 64)
    trt_builder = trt.Builder(logger)
    network = trt_builder.create_network(0)
    builder_config = trt_builder.create_builder_config()
    VarSeqLenNetwork(network, config, weights, megatron=False).populate(
        trt_builder, builder_config, batch_profiles([2], 64), 64
    )
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    constants = [layer for layer in layers if layer.type == trt.LayerType.CONSTANT]
    assert len(constants) == 5 * config.num_hidden_layers
    assert all(tuple(layer.get_output(0).shape) == (1, 1, 1, 1) for layer in constants)
    pinned = [layer for layer in layers if layer.precision_is_set]
    # Per layer: 5 constants, 7 elementwise layers and the tanh; nothing else is pinned.
    assert len(pinned) == 13 * config.num_hidden_layers
    assert all(layer.precision == trt.float32 for layer in pinned)
    unpinned_kinds = (trt.LayerType.CONVOLUTION, trt.LayerType.PLUGIN_V2, trt.LayerType.SHUFFLE)
    assert not [layer for layer in pinned if layer.type in unpinned_kinds]
    names = {layer.get_output(0).name for layer in layers}
    assert {"embeddings_output", "l0_attention_qkv_mult", "l1_attention_context_layer", "l1_gelu", "l0_output_dense",
            "l1_output_reshape", "logits_out"} <= names
    output = network.get_output(0)
    assert output.name == "logits_out" and tuple(output.shape) == (2, -1, 1, 1)


# ---------------------------------------------------------------------------------------------
# Interleaved plugin math against independent computations


def test_interleaved_attention_matches_sdpa_per_sequence():
    torch.manual_seed(0)
    heads, head_size, lengths = 3, 5, [1, 7, 30]
    hidden, total = heads * head_size, sum(lengths)
    tokens = torch.randn(total, 3 * hidden)
    # Channel-major memory, as a plain NCHW convolution would write it.
    qkv = tokens.t().contiguous().view(1, 3 * hidden, total, 1)
    cu = torch.tensor([0, 1, 8, 38], dtype=torch.int32)
    context = interleaved.attention_interleaved(qkv, cu, heads, max(lengths))
    assert context.shape == (1, hidden, total, 1)
    expected = []
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        q, k, v = (tokens[start:end, i * hidden:(i + 1) * hidden].view(end - start, heads, head_size).transpose(0, 1) for i in range(3))
        expected.append(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(end - start, hidden))
    torch.testing.assert_close(context[0, :, :, 0].t(), torch.cat(expected), atol=1e-5, rtol=1e-5)


def test_interleaved_skip_layernorm_normalizes_channels():
    torch.manual_seed(1)
    hidden, total = 24, 9
    x, skip = torch.randn(1, hidden, total, 1), torch.randn(1, hidden, total, 1)
    gamma, beta = torch.randn(hidden), torch.randn(hidden)
    normalized, summed = interleaved.skip_layernorm_interleaved(x, skip, gamma, beta)
    expected_sum = (x + skip)[0, :, :, 0].t()
    expected = torch.nn.functional.layer_norm(expected_sum, (hidden,), gamma, beta, eps=0.0)
    torch.testing.assert_close(summed[0, :, :, 0].t(), expected_sum)
    torch.testing.assert_close(normalized[0, :, :, 0].t(), expected, atol=1e-5, rtol=1e-5)
    assert ops.skip_layernorm_eps(hidden, torch.float32) == 0.0


# ---------------------------------------------------------------------------------------------
# Option errors and bad input


def test_original_option_errors_in_order(monkeypatch, model_files, tmp_path, capsys):
    def args(*extra):
        return builder_varseqlen.parse_args(["-c", str(model_files["config_dir"]), "-o", str(tmp_path / "e.engine"), *extra])

    monkeypatch.setattr(builder_varseqlen, "compute_capability", lambda backend: 70)
    with pytest.raises(RuntimeError, match="only support Xavier"):
        builder_varseqlen.check_options(args("--megatron"), "tensorrt")
    monkeypatch.setattr(builder_varseqlen, "compute_capability", lambda backend: 90)
    with pytest.raises(RuntimeError, match="^Megatron BERT currently only supports int8 and interleaved.$"):
        builder_varseqlen.check_options(args("--megatron", "-i"), "tensorrt")
    with pytest.raises(RuntimeError, match="loading a pickle weights dictionary"):
        builder_varseqlen.check_options(args("--megatron", "-i", "-il"), "tensorrt")
    # The portable engine runs Megatron in FP32/FP16: only the pickle requirement remains.
    with pytest.raises(RuntimeError, match="loading a pickle weights dictionary"):
        builder_varseqlen.check_options(args("--megatron"), "portable")
    builder_varseqlen.check_options(args("--megatron", "--pickle", "w.pkl"), "portable")
    # Post-training calibration runs on the portable engine only; TensorRT keeps the original's refusal.
    with pytest.raises(RuntimeError, match="^Post training calibration is not supported in variable-length BERT"):
        builder_varseqlen.check_options(args("--hf", str(model_files["hf"]), "-i"), "tensorrt")
    builder_varseqlen.check_options(args("--hf", str(model_files["hf"]), "-i"), "portable")

    missing = tmp_path / "missing.json"
    cases = [
        ([], builder_varseqlen.NO_WEIGHTS_MESSAGE),
        (["--hf", str(model_files["hf"]), "-i", "-j", str(missing), "-p", str(tmp_path / "cache")],
         f"{missing}: cannot read file (No such file or directory)"),
    ]
    for extra, message in cases:
        argv = ["-c", str(model_files["config_dir"]), "-o", str(tmp_path / "e.engine"), "--backend", "portable", "--device", "cpu", *extra]
        assert builder_varseqlen.main(argv) == 1
        err = capsys.readouterr().err  # the build log, then one error line
        assert err.endswith(f"\nerror: {message}\n") and err.count("error:") == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_packed_input_is_refused(tiny_model, packed_runner):
    good = checkpoints.packed_batch([5, 3], tiny_model.config.vocab_size, 0)
    bad_cases = {
        "start at 0": dict(good, cu_seqlens=np.array([1, 5, 8], np.int32)),
        "strictly increasing": dict(good, cu_seqlens=np.array([0, 6, 5], np.int32)),
        "tokens": dict(good, cu_seqlens=np.array([0, 5, 7], np.int32)),
    }
    for message, batch in bad_cases.items():
        with pytest.raises(RunnerError, match=message):
            run_packed(packed_runner, batch, 8)
    long = checkpoints.packed_batch([9, 3], tiny_model.config.vocab_size, 0)
    with pytest.raises(RunnerError, match="more than the maximum 8"):
        run_packed(packed_runner, long, 8)


# ---------------------------------------------------------------------------------------------
# perf_varseqlen.py and inference_varseqlen.py


def test_squad_like_lengths_pad_about_half_a_384_window():
    lengths = squad_like_lengths(20000, 384, np.random.default_rng(0))
    assert lengths.min() >= 1 and lengths.max() == 384
    assert 0.45 < 1.0 - lengths.mean() / 384 < 0.55
    assert 0.01 < np.mean(lengths == 384) < 0.06  # long passages fill whole windows
    scaled = squad_like_lengths(1000, 128, np.random.default_rng(0))
    assert scaled.max() <= 128 and 0.45 < 1.0 - scaled.mean() / 128 < 0.55


def test_perf_varseqlen_runs_length_mixes(tmp_path, tmp_path_factory, capsys):
    engine = tmp_path / "perf.engine"
    model = engines.tiny_model_dir(tmp_path_factory)
    assert builder_varseqlen.main(["--hf", str(model), "-o", str(engine), "-b", "2", "-b", "4", "-s", "64",
                                   "--backend", "portable", "--device", "cpu"]) == 0
    common = ["-e", str(engine), "-s", "64", "-b", "4", "-b", "2", "-i", "2", "-w", "1", "--device", "cpu"]
    assert perf_varseqlen.main([*common, "--lengths", "5,64,17", "--json", str(tmp_path / "perf.json")]) == 0
    out = capsys.readouterr().out
    assert "Running 2 iterations with Batch Size: 2\n\tTotal Time: " in out
    assert "Batch Size 4: 91 tokens, mean sequence length 22.8 of 64" in out
    report = json.loads((tmp_path / "perf.json").read_text())
    assert [r["batch_size"] for r in report["results"]] == [2, 4] and report["tool"] == "perf_varseqlen.py"
    assert perf_varseqlen.main([*common, "--squad-lengths"]) == 0
    assert "Running 2 iterations with Batch Size: 4" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        perf_varseqlen.main([*common, "--lengths", "65"])
    assert exit_info.value.code == 1
    assert "outside 1..64" in capsys.readouterr().err


def unpadded_oracle_answer(model_dir, passage: str, question: str, seq_len: int) -> tuple[str, float]:
    """HF logits of each feature's real tokens only (what a packed engine sees), same post-processing."""

    tokenizer = tokenization.FullTokenizer(vocab_file=str(model_dir / "vocab.txt"), do_lower_case=True)
    doc_tokens = dp.convert_doc_tokens(passage)
    features = dp.convert_example_to_features(doc_tokens, question, tokenizer, seq_len, 128, 64)
    model = engines.hf_model(model_dir)
    Output = collections.namedtuple("Output", ["start_logits", "end_logits", "feature_index"])
    outputs = []
    for index, feature in enumerate(features):
        length = int(np.sum(feature.input_mask))
        with torch.no_grad():
            out = model(
                input_ids=torch.as_tensor(np.asarray(feature.input_ids[:length])[None], dtype=torch.long),
                token_type_ids=torch.as_tensor(np.asarray(feature.segment_ids[:length])[None], dtype=torch.long),
            )
        outputs.append(Output(out.start_logits[0].numpy(), out.end_logits[0].numpy(), index))
    text, nbest, _ = dp.get_predictions(doc_tokens, features, outputs, 20, 30)
    return text, nbest[0]["probability"]


def test_inference_varseqlen_answers_like_hf_on_the_real_tokens(tmp_path_factory, capsys):
    model = engines.tiny_model_dir(tmp_path_factory)
    packed = engines.tiny_engine(tmp_path_factory, packed=True)
    capsys.readouterr()
    # -b is not an option here: like any unknown option it is ignored.  The passage makes 2 features.
    argv = ["-e", str(packed), "-b", "4", "-p", engines.PASSAGE, "-q", engines.QUESTION, "-v", str(model / "vocab.txt"),
            "-s", str(engines.SEQ_LEN), "--device", "cpu"]
    assert inference_varseqlen.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    # Unlike the padded engine, the n-best search never sees logits of padding positions, so
    # the oracle is HF on the unpadded tokens.
    text, probability = unpadded_oracle_answer(model, engines.PASSAGE, engines.QUESTION, engines.SEQ_LEN)
    assert lines[:5] == ["", f"Passage: {engines.PASSAGE}", "", f"Question: {engines.QUESTION}", "-" * 24]
    assert lines[5].startswith("Running inference in ") and lines[5].endswith(" Sentences/Sec")
    assert lines[7] == f"Answer: '{text}'"
    assert lines[8].startswith("With probability: ")
    assert float(lines[8].split(": ")[1]) == pytest.approx(probability * 100.0, abs=2e-3)


def test_packed_engine_profiles_and_embedding_table_as_the_answerer_sees_them(packed_runner, tiny_model):
    assert packed_runner.profile_ranges() == [((1, MAX_BATCH), (1, MAX_SEQ))]
    assert packed_runner.uncovered_dimension(1, MAX_SEQ + 1) == (
        f"Sequence length {MAX_SEQ + 1} is outside every profile of the engine, "
        f"which takes batch size 1..{MAX_BATCH} with sequence length 1..{MAX_SEQ}."
    )
    assert packed_runner.word_embedding_rows == tiny_model.config.vocab_size


def test_inference_varseqlen_refuses_a_longer_sequence_length_before_answering(tmp_path_factory, capsys):
    """Before, only a question whose feature was too long failed, midway through a SQuAD run."""

    model = engines.tiny_model_dir(tmp_path_factory)
    packed = engines.tiny_engine(tmp_path_factory, packed=True)
    capsys.readouterr()
    longer = 2 * engines.SEQ_LEN
    argv = ["-e", str(packed), "-p", engines.PASSAGE, "-q", engines.QUESTION, "-v", str(model / "vocab.txt"), "-s", str(longer), "--device", "cpu"]
    status, out, err = engines.run_main(inference_varseqlen.main, argv, capsys)
    assert status == 1 and out == ""
    assert err == (
        f"inference_varseqlen.py: error: Could not find any profile that can run sequence length {longer}. Sequence length "
        f"{longer} is outside every profile of the engine, which takes batch size 1 with sequence length 1..{engines.SEQ_LEN}.\n"
    )


def test_pickle_weights_without_megatron_run_the_packed_network(tiny_model, model_files, tmp_path):
    """A post-LN BERT in Megatron pickle names: the fused q|k|v blocks are repacked per head."""

    sd = {name: p.detach().numpy() for name, p in tiny_model.named_parameters()}
    tensors = {}
    for name, value in sd.items():
        renamed = name.replace("bert.embeddings.", "bert.embedding.").replace("token_type_", "tokentype_")
        renamed = renamed.replace("bert.encoder.layer.", "bert.encoder.layers.")
        if ".attention.self." not in name:
            tensors[renamed] = value
    for i in range(tiny_model.config.num_hidden_layers):
        for kind in ("weight", "bias"):
            parts = [sd[f"bert.encoder.layer.{i}.attention.self.{p}.{kind}"] for p in ("query", "key", "value")]
            tensors[f"bert.encoder.layers.{i}.attention.query_key_value.{kind}"] = np.concatenate(parts)
    path = tmp_path / "bert.pkl"
    path.write_bytes(pickle.dumps(tensors))
    engine = tmp_path / "pickle.engine"
    assert builder_varseqlen.main(["--pickle", str(path), "-c", str(model_files["config_dir"]), "-o", str(engine),
                                   "-b", "2", "-s", "64", "--backend", "portable", "--device", "cpu"]) == 0
    batch = checkpoints.packed_batch([64, 9], tiny_model.config.vocab_size, 4)
    logits = run_packed(EngineRunner(engine, device="cpu"), batch, 64)
    np.testing.assert_allclose(logits, checkpoints.hf_packed_logits(tiny_model, batch), atol=1e-4, rtol=1e-4)


def test_int8_interleaved_engine_matches_the_packed_int8_engine(tiny_model, model_files, tmp_path):
    """QAT ONNX, -i -il: the [1, E, T, 1] network (q|k|v channel blocks) computes what the packed -i one does.

    The tolerance leaves room for the two layouts' INT8 kernels to round differently; a wrong
    channel order or layout gives differences of order 1.
    """

    amax = {name: 4.0 for name in checkpoints.qat_amax_names(tiny_model.config.num_hidden_layers)}
    onnx = checkpoints.write_onnx_model(tiny_model, tmp_path / "qat.onnx", amax)
    batch = checkpoints.packed_batch([64, 9, 33], tiny_model.config.vocab_size, 1)
    logits = {}
    for layout in (["-il"], []):
        engine = tmp_path / f"int8{len(layout)}.engine"
        argv = ["-x", str(onnx), "-c", str(model_files["config_dir"]), "-o", str(engine), "-b", "3", "-s", "64",
                "-i", "-f", *layout, "--backend", "portable", "--device", "cpu"]
        assert builder_varseqlen.main(argv) == 0
        logits[bool(layout)] = run_packed(EngineRunner(engine, device="cpu"), batch, 64)
    np.testing.assert_allclose(logits[True], logits[False], atol=5e-2, rtol=0)
