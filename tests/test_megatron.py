"""Megatron-BERT through builder_varseqlen.py --megatron, against HuggingFace MegatronBertForQuestionAnswering.

The test writes the HF model's weights as a Megatron pickle in the names of docs/SPEC.md "Megatron pickle"
(fused ``query_key_value`` in q|k|v block order, ``embedding``/``tokentype`` spellings).  Megatron
is pre-LayerNorm, so the engine's LayerNorm parameters are HF's shifted by one position: the
embedding LN is layer 0's ``attention.ln``, layer i's attention-output LN is its ``ln``, and layer
i's output LN is layer i+1's ``attention.ln`` (the encoder's final ``ln`` for the last layer).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import builder_varseqlen
import checkpoints
from varseqlen_network import VarSeqLenNetwork, batch_profiles

HIDDEN, HEADS, LAYERS, INTERMEDIATE, VOCAB = 48, 3, 2, 40, 97
MAX_SEQ = 160


def megatron_qa_model(seed: int = 0):
    from transformers import MegatronBertConfig, MegatronBertForQuestionAnswering

    config = MegatronBertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_SEQ,
        type_vocab_size=2,
        hidden_act=checkpoints.ENGINE_ACTIVATION,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = MegatronBertForQuestionAnswering(config).eval()
    return checkpoints.perturb_parameters(model, seed, r"\bln\.weight$")


def megatron_pickle_tensors(model, amax: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """The model's weights under Megatron pickle names, plus optional raw amax entries."""
    sd = {name: p.detach().float().numpy().copy() for name, p in model.named_parameters()}
    layers = model.config.num_hidden_layers
    tensors = {
        "bert.embedding.word_embeddings.weight": sd["bert.embeddings.word_embeddings.weight"],
        "bert.embedding.position_embeddings.weight": sd["bert.embeddings.position_embeddings.weight"],
        "bert.embedding.tokentype_embeddings.weight": sd["bert.embeddings.token_type_embeddings.weight"],
        "bert.embedding.LayerNorm.weight": sd["bert.encoder.layer.0.attention.ln.weight"],
        "bert.embedding.LayerNorm.bias": sd["bert.encoder.layer.0.attention.ln.bias"],
        "qa_outputs.weight": sd["qa_outputs.weight"],
        "qa_outputs.bias": sd["qa_outputs.bias"],
    }
    for i in range(layers):
        hf, mt = f"bert.encoder.layer.{i}.", f"bert.encoder.layers.{i}."
        next_ln = f"bert.encoder.layer.{i + 1}.attention.ln" if i + 1 < layers else "bert.encoder.ln"
        for kind in ("weight", "bias"):
            tensors[mt + f"attention.query_key_value.{kind}"] = np.concatenate(
                [sd[hf + f"attention.self.{p}.{kind}"] for p in ("query", "key", "value")]
            )
            tensors[mt + f"attention.output.dense.{kind}"] = sd[hf + f"attention.output.dense.{kind}"]
            tensors[mt + f"intermediate.dense.{kind}"] = sd[hf + f"intermediate.dense.{kind}"]
            tensors[mt + f"output.dense.{kind}"] = sd[hf + f"output.dense.{kind}"]
        tensors[mt + "attention.output.LayerNorm.weight"] = sd[hf + "ln.weight"]
        tensors[mt + "attention.output.LayerNorm.bias"] = sd[hf + "ln.bias"]
        tensors[mt + "output.LayerNorm.weight"] = sd[next_ln + ".weight"]
        tensors[mt + "output.LayerNorm.bias"] = sd[next_ln + ".bias"]
    # Quantizer scales ride along in real pickles; the loader skips them.
    tensors["bert.encoder.layers.0.attention.query_key_value._weight_quantizer.scale"] = np.ones(1, np.float32)
    for name, value in (amax or {}).items():
        tensors[name] = np.array(value, dtype=np.float32)
    return tensors


def write_pickle(tensors: dict[str, np.ndarray], path) -> str:
    path.write_bytes(pickle.dumps(tensors))
    return str(path)


def write_config_dir(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bert_config.json").write_text(
        '{"hidden_size": %d, "num_attention_heads": %d, "num_hidden_layers": %d, "intermediate_size": %d}'
        % (HIDDEN, HEADS, LAYERS, INTERMEDIATE)
    )
    return str(folder)


def run_packed(engine: str, batch: dict[str, np.ndarray], max_seq: int, device: str = "cpu") -> np.ndarray:
    from helpers.runner import EngineRunner

    runner = EngineRunner(engine, device=device)
    runner.activate(len(batch["cu_seqlens"]) - 1, max_seq, total_tokens=len(batch["input_ids"]))
    return runner.infer(batch).reshape(2, -1)


@pytest.fixture(scope="module")
def megatron_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("megatron")
    model = megatron_qa_model()
    return {
        "model": model,
        "config_dir": write_config_dir(folder / "config"),
        "pickle": write_pickle(megatron_pickle_tensors(model), folder / "megatron.pkl"),
        "folder": folder,
    }


def build(files, *extra: str, name: str = "megatron.engine") -> str:
    engine = str(files["folder"] / name)
    argv = ["--pickle", files["pickle"], "-c", files["config_dir"], "-o", engine, "--megatron",
            "-b", "3", "-s", str(MAX_SEQ), "--backend", "portable", "--device", "cpu", *extra]
    assert builder_varseqlen.main(argv) == 0
    return engine


@pytest.mark.parametrize("plugins", ["--use-deprecated-plugins", "--use-v3-plugins"])
def test_megatron_fp32_matches_hf_megatron(megatron_files, plugins):
    engine = build(megatron_files, plugins, name=f"megatron{plugins}.engine")
    for seed, lengths in enumerate([[1, 17, MAX_SEQ], [64], [2, 129]]):
        batch = checkpoints.packed_batch(lengths, VOCAB, seed)
        expected = checkpoints.hf_packed_logits(megatron_files["model"], batch)
        np.testing.assert_allclose(run_packed(engine, batch, MAX_SEQ), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FP16 engines run on CUDA only")
def test_megatron_fp16_matches_hf_megatron_on_cuda(megatron_files):
    engine = str(megatron_files["folder"] / "megatron_fp16.engine")
    argv = ["--pickle", megatron_files["pickle"], "-c", megatron_files["config_dir"], "-o", engine, "--megatron",
            "-b", "3", "-s", str(MAX_SEQ), "--fp16", "--backend", "portable", "--device", "cuda"]
    assert builder_varseqlen.main(argv) == 0
    batch = checkpoints.packed_batch([1, 17, MAX_SEQ], VOCAB, 7)
    expected = checkpoints.hf_packed_logits(megatron_files["model"], batch)
    np.testing.assert_allclose(run_packed(engine, batch, MAX_SEQ, "cuda"), expected, atol=2e-2, rtol=2e-2)


def test_megatron_without_pickle_or_with_bad_pickle_fails_cleanly(megatron_files, tmp_path, capsys):
    model = megatron_files["model"]
    good = megatron_pickle_tensors(model)
    missing = dict(good)
    del missing["bert.encoder.layers.1.output.dense.weight"]
    misshaped = dict(good)
    misshaped["bert.encoder.layers.0.intermediate.dense.weight"] = np.ones((INTERMEDIATE, HIDDEN - 1), np.float32)
    bad_qkv = dict(good)
    bad_qkv["bert.encoder.layers.0.attention.query_key_value.weight"] = np.ones((3 * HIDDEN, HIDDEN + 4), np.float32)
    (tmp_path / "truncated.pkl").write_bytes(pickle.dumps(good)[:100])
    cases = {
        "no pickle": ([], builder_varseqlen.MEGATRON_PICKLE_MESSAGE),
        "missing": (["--pickle", write_pickle(missing, tmp_path / "missing.pkl")], "l1_output_dense_kernel"),
        "misshaped": (["--pickle", write_pickle(misshaped, tmp_path / "misshaped.pkl")], "l0_intermediate_dense_kernel"),
        "bad qkv": (["--pickle", write_pickle(bad_qkv, tmp_path / "bad_qkv.pkl")], "query_key_value"),
        "truncated": (["--pickle", str(tmp_path / "truncated.pkl")], "cannot read Megatron pickle"),
    }
    for label, (source, message) in cases.items():
        engine = tmp_path / f"{label}.engine"
        argv = [*source, "-c", megatron_files["config_dir"], "-o", str(engine), "--megatron",
                "--backend", "portable", "--device", "cpu"]
        assert builder_varseqlen.main(argv) == 1, label
        err = capsys.readouterr().err  # the build log, then one error line
        last = err.splitlines()[-1]
        assert last.startswith("error: ") and message in last and err.count("error:") == 1, (label, err)
        assert not engine.exists(), label
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".engine", ".tmp")]


def qat_amax_entries(layers: int) -> dict[str, float]:
    """Distinct amax values under Megatron pickle names, for every range docs/SPEC.md "QAT ranges" sets."""
    entries = {}
    for i in range(layers):
        p = f"bert.encoder.layers.{i}."
        names = [
            "attention.query_key_value._input_quantizer._amax",
            "attention.matmul_q_input_quantizer._amax",
            "attention.matmul_k_input_quantizer._amax",
            "attention.matmul_v_input_quantizer._amax",
            "attention.matmul_a_input_quantizer._amax",
            "attention.output.dense._input_quantizer._amax",
            "attention.output.add_local_input_quantizer._amax",
            "attention.output.add_residual_input_quantizer._amax",
            "intermediate.dense._input_quantizer._amax",
            "output.dense._input_quantizer._amax",
            "output.add_local_input_quantizer._amax",
            "output.add_residual_input_quantizer._amax",
        ]
        entries.update({p + name: 1.0 + i + 0.05 * k for k, name in enumerate(names)})
    entries[f"bert.encoder.layers.{layers - 1}.output.LayerNorm.output_quantizer._amax"] = 9.5
    return entries


def test_int8_interleaved_megatron_network_carries_the_qat_ranges(megatron_files, tmp_path):
    from helpers.backend import select_backend

    select_backend("portable")
    from helpers.backend import trt

    amax = qat_amax_entries(LAYERS)
    path = write_pickle(megatron_pickle_tensors(megatron_files["model"], amax), tmp_path / "qat.pkl")
    logger = trt.Logger(trt.Logger.ERROR)
    trt.init_libnvinfer_plugins(logger, "")
    args = builder_varseqlen.parse_args(["--pickle", path, "-c", megatron_files["config_dir"], "-o", "x", "--megatron", "-i", "-il"])
    config = builder_varseqlen.load_config(args, logger)
    assert config.use_qat and config.interleaved
    weights = builder_varseqlen.load_weights("pickle", path, config, MAX_SEQ)
    trt_builder = trt.Builder(logger)
    network = trt_builder.create_network(0)
    VarSeqLenNetwork(network, config, weights, megatron=True).populate(
        trt_builder, trt_builder.create_builder_config(), batch_profiles([2], MAX_SEQ), MAX_SEQ
    )
    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    tensors = {layer.get_output(k).name: layer.get_output(k) for layer in layers.values() for k in range(layer.num_outputs)}

    def amax_of(name: str) -> float:
        return amax[name]

    def assert_range(tensor, value: float) -> None:
        assert tensor.dynamic_range == pytest.approx((-value, value)), tensor.name

    assert_range(tensors["embeddings_output"], amax_of("bert.encoder.layers.0.attention.query_key_value._input_quantizer._amax"))
    embedding = next(l for l in layers.values() if l.num_outputs == 2 and l.get_output(0).name == "embeddings_output")
    assert_range(embedding.get_output(1), amax_of("bert.encoder.layers.0.attention.output.add_residual_input_quantizer._amax"))
    for i in range(LAYERS):
        p = f"bert.encoder.layers.{i}."
        qkv_layer = layers[f"l{i}_attention_qkv"]
        assert_range(qkv_layer.get_input(0), amax_of(p + "attention.query_key_value._input_quantizer._amax"))
        expected_qkv = max(amax_of(p + f"attention.matmul_{m}_input_quantizer._amax") for m in "qkv")
        assert_range(tensors[f"l{i}_attention_qkv_mult"], expected_qkv)
        assert_range(tensors[f"l{i}_attention_context_layer"], amax_of(p + "attention.output.dense._input_quantizer._amax"))
        attention_dense = layers[f"l{i}_attention_output_dense"]
        assert_range(attention_dense.get_output(0), amax_of(p + "attention.output.add_local_input_quantizer._amax"))
        first_ln = layers[f"l{i}_intermediate_dense"].get_input(0)
        assert_range(first_ln, amax_of(p + "intermediate.dense._input_quantizer._amax"))
        assert_range(tensors[f"l{i}_gelu"], amax_of(p + "output.dense._input_quantizer._amax"))
        assert_range(tensors[f"l{i}_output_dense"], amax_of(p + "output.add_local_input_quantizer._amax"))
        # Megatron residuals: the skip of skipLN 1 and skipLN 1's pre-LN sum (the skip of skipLN 2).
        first_ln_layer = next(l for l in layers.values() if l.num_outputs == 2 and l.get_output(0) is first_ln)
        assert_range(first_ln_layer.get_input(1), amax_of(p + "attention.output.add_residual_input_quantizer._amax"))
        assert_range(first_ln_layer.get_output(1), amax_of(p + "output.add_residual_input_quantizer._amax"))
    assert_range(tensors[f"l{LAYERS - 1}_output_reshape"], 9.5)
    qkv_plugin = layers["l0_attention_qkv_to_ctx"]
    assert qkv_plugin.num_inputs == 3  # interleaved: qkv, cu_seqlens, max_seqlen (no mask)
