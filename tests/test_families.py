"""Encoder families through builder.py --hf / builder_varseqlen.py --hf and the runners.

For RoBERTa, XLM-RoBERTa, DistilBERT, ELECTRA and ALBERT: a random model with awkward sizes and a
tokenizer trained on the fly (``family_models``); engine logits against the family's HF class in
float64, fixed and packed, and ``inference.py -sq`` answers against HuggingFace's own offset-based
answers.  What each family does differently is checked where the loader expresses it.
"""

from __future__ import annotations

import json
from pathlib import Path

import checkpoints
import family_models as fm
import numpy as np
import pytest
import torch
from engines import run_main
from squad_fixtures import make_qa, write_squad_file
from test_builder import FP16_TOLERANCE, FP32_TOLERANCE

import bert_weights as bw
import builder
import builder_varseqlen
import inference
import inference_varseqlen
from helpers import portable
from helpers.model_info import ModelInfo
from helpers.runner import EngineRunner

FIXED_SEQ, PACKED_SEQ, BATCH = 37, 128, 3
SQUAD_SEQ = 128
CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def portable_device(monkeypatch):
    monkeypatch.setenv("DEMOBERT_DEVICE", "cpu")


_cache: dict = {}


def family_files(model_type: str, tmp_path_factory, **sizes) -> dict:
    """{model, folder, fixed, packed}: the family's model, its folder and an FP32 engine of each kind (built once)."""
    key = (model_type, tuple(sorted(sizes.items())))
    if key not in _cache:
        root = tmp_path_factory.mktemp(model_type)
        model, folder = fm.write_family_folder(model_type, root / "hf", **sizes)
        common = ["--hf", str(folder), "--backend", "portable", "--device", "cpu"]
        fixed, packed = root / "fixed.engine", root / "packed.engine"
        assert builder.main([*common, "-o", str(fixed), "-b", "1", "-b", str(BATCH), "-s", str(FIXED_SEQ),
                             "-s", str(SQUAD_SEQ)]) == 0
        assert builder_varseqlen.main([*common, "-o", str(packed), "-b", str(BATCH), "-s", str(PACKED_SEQ)]) == 0
        _cache[key] = dict(model=model, folder=folder, fixed=fixed, packed=packed)
    return _cache[key]


def padding_index(model) -> int:
    """The token HF RoBERTa gives no position of its own (-1: none)."""
    return model.config.pad_token_id if model.config.model_type in ("roberta", "xlm-roberta") else -1


def fixed_error(engine: Path, model, family: fm.Family, batch: int, seq: int, device: str = "cpu") -> float:
    inputs = fm.random_inputs(batch, seq, model.config.vocab_size, family.token_types, batch * seq, padding_index(model))
    runner = EngineRunner(engine, device=device)
    runner.activate(batch, seq)
    logits = runner.infer(inputs).reshape(batch, seq, 2)
    return float(np.abs(logits - fm.hf_logits(model, inputs, family.token_types)).max())


def packed_error(engine: Path, model, family: fm.Family, lengths: list[int], device: str = "cpu") -> float:
    batch = checkpoints.packed_batch(lengths, model.config.vocab_size, seed=len(lengths))
    pad = padding_index(model)
    batch["input_ids"] = np.where(batch["input_ids"] == pad, pad + 1, batch["input_ids"]).astype(np.int32)
    if family.token_types == 1:
        batch["segment_ids"][:] = 0
    runner = EngineRunner(engine, device=device)
    runner.activate(len(lengths), PACKED_SEQ, total_tokens=sum(lengths))
    logits = runner.infer(batch).reshape(2, -1)
    return float(np.abs(logits - fm.packed_logits(model, batch, family.token_types)).max())


# ---------------------------------------------------------------------------------------------
# Engines against the family's HF model


@pytest.mark.parametrize("model_type", list(fm.FAMILIES))
def test_fp32_engines_match_hf(model_type, tmp_path_factory):
    files = family_files(model_type, tmp_path_factory)
    family = fm.FAMILIES[model_type]
    for batch, seq in ((1, FIXED_SEQ), (BATCH, FIXED_SEQ), (BATCH, SQUAD_SEQ)):
        assert fixed_error(files["fixed"], files["model"], family, batch, seq) <= FP32_TOLERANCE, (batch, seq)
    for lengths in ([PACKED_SEQ], [5, 64, 17], [1, 2]):
        assert packed_error(files["packed"], files["model"], family, lengths) <= FP32_TOLERANCE, lengths


def test_albert_groups_of_several_layers(tmp_path_factory):
    """4 encoder steps over 2 groups of 2 layers: 8 engine layers, step i running group i // 2."""
    files = family_files("albert", tmp_path_factory, num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2)
    config = bw.load_hf_config(str(files["folder"]))
    assert config.num_hidden_layers == 8
    weights = bw.load_hf_weights(str(files["folder"]), config)
    sd = checkpoints.state_dict_arrays(files["model"])
    for layer, (group, depth) in enumerate([(0, 0), (0, 1), (0, 0), (0, 1), (1, 0), (1, 1), (1, 0), (1, 1)]):
        shared = f"albert.encoder.albert_layer_groups.{group}.albert_layers.{depth}."
        np.testing.assert_array_equal(weights[f"l{layer}_intermediate_dense_kernel"], sd[shared + "ffn.weight"])
        np.testing.assert_array_equal(weights[f"l{layer}_output_layernorm_gamma"], sd[shared + "full_layer_layer_norm.weight"])
    family = fm.FAMILIES["albert"]
    assert fixed_error(files["fixed"], files["model"], family, BATCH, FIXED_SEQ) <= FP32_TOLERANCE
    assert packed_error(files["packed"], files["model"], family, [7, 100]) <= FP32_TOLERANCE


@pytest.mark.skipif(not CUDA, reason="FP16 engines run on CUDA only")
@pytest.mark.parametrize("model_type", list(fm.FAMILIES))
def test_fp16_engines_match_hf_on_cuda(model_type, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DEMOBERT_DEVICE", "cuda")
    files = family_files(model_type, tmp_path_factory)
    family = fm.FAMILIES[model_type]
    root = files["folder"].parent
    common = ["--hf", str(files["folder"]), "--fp16", "--backend", "portable", "--device", "cuda"]
    fixed, packed = root / "fixed_fp16.engine", root / "packed_fp16.engine"
    assert builder.main([*common, "-o", str(fixed), "-b", str(BATCH), "-s", str(FIXED_SEQ)]) == 0
    assert builder_varseqlen.main([*common, "-o", str(packed), "-b", str(BATCH), "-s", str(PACKED_SEQ)]) == 0
    assert fixed_error(fixed, files["model"], family, BATCH, FIXED_SEQ, "cuda") <= FP16_TOLERANCE
    assert packed_error(packed, files["model"], family, [5, 64, 17], "cuda") <= FP16_TOLERANCE


@pytest.mark.parametrize("model_type", ["roberta", "albert"])
def test_int8_calibrates_with_the_checkpoints_tokenizer(model_type, tmp_path_factory, tmp_path):
    """PTQ INT8 (fixed length): the calibration reads SQuAD through the folder's tokenizer.json; the INT8
    engine tracks the FP32 one."""
    from helpers.portable.calibration import parse_calibration_table

    files = family_files(model_type, tmp_path_factory)
    family = fm.FAMILIES[model_type]
    squad = write_squad_file(tmp_path / "squad.json", squad_paragraphs())
    int8 = tmp_path / "int8.engine"
    assert builder.main(["--hf", str(files["folder"]), "-o", str(int8), "-b", str(BATCH), "-s", str(SQUAD_SEQ),
                         "-i", "-j", squad, "-v", str(files["folder"]), "-n", "20", "-p", str(tmp_path / "cache"),
                         "--backend", "portable", "--device", "cpu"]) == 0
    cache = tmp_path / "cache"
    _, table = parse_calibration_table(cache.read_bytes())
    assert "embeddings_output" in table
    inputs = fm.random_inputs(BATCH, SQUAD_SEQ, files["model"].config.vocab_size, family.token_types, 1,
                              padding_index(files["model"]))
    logits = []
    for engine in (files["fixed"], int8):
        runner = EngineRunner(engine, device="cpu")
        runner.activate(BATCH, SQUAD_SEQ)
        logits.append(runner.infer(inputs).reshape(BATCH, SQUAD_SEQ, 2)[inputs["input_mask"] == 1].ravel())
    cosine = logits[0] @ logits[1] / np.linalg.norm(logits[0]) / np.linalg.norm(logits[1])
    assert cosine >= 0.99 and not np.array_equal(*logits)


# ---------------------------------------------------------------------------------------------
# What the loaders and the engine file make explicit


@pytest.mark.parametrize("model_type", list(fm.FAMILIES))
def test_engine_file_records_family_tokenizer_and_token_types(model_type, tmp_path_factory):
    files = family_files(model_type, tmp_path_factory)
    family = fm.FAMILIES[model_type]
    expected = ModelInfo(model_type, family.tokenizer, family.token_types)
    for engine in (files["fixed"], files["packed"]):
        header = portable.read_engine_header(engine.read_bytes())
        assert json.loads(header["name"]) == {"family": model_type, "tokenizer": family.tokenizer,
                                              "token_types": family.token_types}
        assert EngineRunner(engine, device="cpu").model == expected


def test_calibration_caches_of_other_families_are_named_by_the_family():
    sizes = dict(num_attention_heads=12, hidden_size=768, intermediate_size=3072, num_hidden_layers=12)
    assert bw.default_calibration_cache_name(bw.BertConfig(**sizes), [384]) == "BertSquadL12H64A12S384CalibCache"
    config = bw.BertConfig(**sizes, model_type="xlm-roberta")
    assert bw.default_calibration_cache_name(config, [128, 384]) == "XlmRobertaSquadL12H64A12S128-384CalibCache"


def test_engines_of_other_builds_read_as_bert_with_wordpiece():
    assert ModelInfo.from_network_name("Unnamed Network 0") == ModelInfo("bert", "wordpiece", 2)
    assert ModelInfo.from_network_name('{"family": "roberta", "tokenizer": 7}') == ModelInfo("roberta", "wordpiece", 2)


def test_roberta_positions_start_after_the_padding_index(tmp_path_factory):
    files = family_files("roberta", tmp_path_factory)
    config = bw.load_hf_config(str(files["folder"]))
    weights = bw.load_hf_weights(str(files["folder"]), config)
    table = checkpoints.state_dict_arrays(files["model"])["roberta.embeddings.position_embeddings.weight"]
    padding = files["model"].config.pad_token_id
    np.testing.assert_array_equal(weights["bert_embeddings_position_embeddings"], table[padding + 1:])
    assert weights["bert_embeddings_token_type_embeddings"].shape[0] == 1


def test_distilbert_has_one_zero_token_type_row(tmp_path_factory):
    files = family_files("distilbert", tmp_path_factory)
    config = bw.load_hf_config(str(files["folder"]))
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size, config.num_hidden_layers) == (48, 3, 37, 2)
    weights = bw.load_hf_weights(str(files["folder"]), config)
    np.testing.assert_array_equal(weights["bert_embeddings_token_type_embeddings"], np.zeros((1, 48), np.float32))


@pytest.mark.parametrize("model_type, gelu, embedding_size", [
    ("roberta", "erf", None), ("xlm-roberta", "erf", None), ("distilbert", "erf", None),
    ("electra", "erf", 24), ("albert", "tanh", 20),
])
def test_configs_state_the_gelu_form_and_the_embedding_width(model_type, gelu, embedding_size, tmp_path_factory):
    config = bw.load_hf_config(str(family_files(model_type, tmp_path_factory)["folder"]))
    assert (config.model_type, config.gelu, config.embedding_size) == (model_type, gelu, embedding_size)
    assert config.tokenizer == fm.FAMILIES[model_type].tokenizer


def test_gelu_form_decides_the_layers(tmp_path):
    """"gelu" is the exact erf form (one GELU_ERF activation); "gelu_new" the builder's tanh chain."""
    from helpers.backend import select_backend, trt

    select_backend("portable")
    model = checkpoints.tiny_qa_model(hidden=24, heads=2, layers=1, intermediate=37)
    for act, expected in (("gelu", [trt.ActivationType.GELU_ERF]), ("gelu_new", [trt.ActivationType.TANH])):
        model.config.hidden_act = act
        folder = checkpoints.write_hf_folder(model, tmp_path / act)
        config = bw.load_hf_config(str(folder))
        logger = trt.Logger(trt.Logger.ERROR)
        trt.init_libnvinfer_plugins(logger, "")
        trt_builder = trt.Builder(logger)
        network = trt_builder.create_network(0)
        builder.populate_network(trt_builder, network, trt_builder.create_builder_config(), config,
                                 bw.load_hf_weights(str(folder), config), [1], [8])
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        assert [layer.type for layer in layers if isinstance(layer, trt.IActivationLayer)] == expected
        constants = [layer for layer in layers if isinstance(layer, trt.IConstantLayer)]
        assert len(constants) == (5 if act == "gelu_new" else 0)


def test_a_family_the_engine_cannot_build_is_one_line_naming_it(tmp_path, capfd):
    from transformers import DebertaV2Config, DebertaV2ForQuestionAnswering

    DebertaV2ForQuestionAnswering(DebertaV2Config(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                  intermediate_size=20)).save_pretrained(tmp_path / "deberta")
    output = tmp_path / "deberta.engine"
    assert builder.main(["--hf", str(tmp_path / "deberta"), "-o", str(output), "--backend", "portable"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "model_type 'deberta-v2' is not supported" in err[-1], err
    assert "Traceback" not in "\n".join(err) and not output.exists()


# ---------------------------------------------------------------------------------------------
# inference.py -sq with the checkpoint's own tokenizer, against HuggingFace's answers


def squad_paragraphs() -> list[tuple[str, list[dict]]]:
    """Passages of two CORPUS sentences, three questions each (any question: the weights are random).

    Every pair fits one window of SQUAD_SEQ tokens, so that HuggingFace's answer sees the same input."""
    questions = ["Who won two Nobel prizes?", "When did the museum open?", "Where does the water go?"]
    paragraphs = []
    for index in range(len(fm.CORPUS)):
        sentences = [fm.CORPUS[index], fm.CORPUS[(index + 3) % len(fm.CORPUS)]]
        context = " ".join(sentences)
        qas = [make_qa(f"q{index}_{n}", question, [sentences[0].split()[1]]) for n, question in enumerate(questions)]
        paragraphs.append((context, qas))
    return paragraphs


@pytest.mark.parametrize("model_type", list(fm.FAMILIES))
def test_squad_answers_match_hf_offsets(model_type, tmp_path_factory, tmp_path, capsys):
    files = family_files(model_type, tmp_path_factory)
    family = fm.FAMILIES[model_type]
    paragraphs = squad_paragraphs()
    squad = write_squad_file(tmp_path / "squad.json", paragraphs)
    for main, engine, pad_to in ((inference.main, files["fixed"], SQUAD_SEQ), (inference_varseqlen.main, files["packed"], None)):
        expected = {
            qa["id"]: fm.hf_answer(files["model"], files["folder"] / "tokenizer.json", qa["question"], context,
                                   family.token_types, pad_to)
            for context, qas in paragraphs for qa in qas
        }
        predictions = tmp_path / "predictions.json"
        status, _, err = run_main(main, ["-e", str(engine), "-v", str(files["folder"]), "-s", str(SQUAD_SEQ),
                                         "-sq", squad, "-o", str(predictions), "--device", "cpu"], capsys)
        assert status == 0, err
        answers = json.loads(predictions.read_text())
        agree = sum(answers[qid] == text for qid, text in expected.items())
        assert agree >= 0.95 * len(expected), [(answers[q], t) for q, t in expected.items() if answers[q] != t]


def test_benchmark_segment_ids_stay_within_the_token_types(tmp_path_factory):
    """perf.py's random inputs: segment ids 0 and 1 for two token types (the demo's), only 0 for one."""
    from helpers.latency import random_inputs

    for model_type, expected in (("roberta", {0}), ("electra", {0, 1})):
        runner = EngineRunner(family_files(model_type, tmp_path_factory)["fixed"], device="cpu")
        assert set(np.unique(random_inputs(runner, BATCH, FIXED_SEQ, seed=1)["segment_ids"])) == expected
        runner = EngineRunner(family_files(model_type, tmp_path_factory)["packed"], device="cpu")
        assert set(np.unique(random_inputs(runner, BATCH, PACKED_SEQ, seed=1)["segment_ids"])) == expected


def test_vocabulary_must_fit_the_engines_tokenizer(tmp_path_factory, tmp_path, capsys):
    files = family_files("roberta", tmp_path_factory)
    capsys.readouterr()  # what writing the model printed (transformers' progress bars) is not inference.py's
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n")
    for path, fragment in ((vocab, "reads text with a bpe tokenizer, not a WordPiece vocab.txt"),
                           (tmp_path, "holds no tokenizer.json")):
        status, _, err = run_main(inference.main, ["-e", str(files["fixed"]), "-v", str(path), "-s", str(SQUAD_SEQ),
                                                   "-p", "The dog sleeps.", "-q", "Who sleeps?", "--device", "cpu"], capsys)
        assert status == 1 and fragment in err and err.count("\n") == 1, err


def test_a_bert_config_does_not_build_another_familys_folder(tmp_path_factory, tmp_path, capfd):
    files = family_files("electra", tmp_path_factory)
    model = files["model"]
    checkpoints.write_bert_config(model, tmp_path / "config")
    output = tmp_path / "electra.engine"
    assert builder.main(["--hf", str(files["folder"]), "-c", str(tmp_path / "config"), "-o", str(output),
                         "--backend", "portable"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert "model_type is 'electra', but the configuration in use is for 'bert'" in err[-1], err
    assert not output.exists()
