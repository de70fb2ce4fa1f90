"""Shared fixtures: one tiny BERT QA model written once per session in every weight format, the
portable engine's logger and devices, its FP32 engine and vocabulary, and the INT8 engine tests' model and FP32 / PTQ engines."""

from __future__ import annotations

import pytest

import checkpoints
import helpers.portable as trt
from bench import int8_accuracy as ia
from engines import INT8_SEQ, build, ptq_options, tiny_engine, tiny_model_dir
from portable_bert import RecordingLogger, devices


class FormatFiles(dict):
    """{format: path}; the TF checkpoint ("ckpt") is written on first use, so that only the tests
    that read it need TensorFlow (the GPU machines have none)."""

    def __init__(self, model, folder):
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__(
            config_dir=checkpoints.write_bert_config(model, folder),
            hf=checkpoints.write_hf_folder(model, folder / "hf"),
            pytorch=checkpoints.write_pytorch_checkpoint(model, folder / "model.pt"),
            onnx=checkpoints.write_onnx_model(model, folder / "model.onnx"),
        )
        self._model, self._folder = model, folder

    def __missing__(self, key):
        if key != "ckpt":
            raise KeyError(key)
        pytest.importorskip("tensorflow")
        self[key] = checkpoints.write_tf_checkpoint(self._model, self._folder / "model.ckpt")
        return self[key]


def write_all_formats(model, folder):
    """{format: path} for the builder's sources, plus the matching bert_config.json folder."""
    return FormatFiles(model, folder)


@pytest.fixture(scope="session")
def tiny_model():
    return checkpoints.tiny_qa_model(hidden=48, heads=3, layers=2, intermediate=37)


@pytest.fixture(scope="session")
def tiny_files(tiny_model, tmp_path_factory):
    return write_all_formats(tiny_model, tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def logger():
    """A portable-engine logger that records its messages, with the BERT plugins registered."""
    log = RecordingLogger(trt)
    trt.init_libnvinfer_plugins(log, "")
    return log


@pytest.fixture(params=devices())
def device(request):
    """Each device the portable engine can run on here (the previous one is restored afterwards)."""
    previous = trt.get_device()
    trt.set_device(request.param)
    yield trt.get_device()
    trt.set_device(previous)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The tiny model's FP32 portable engine: batch 1, sequence length engines.SEQ_LEN."""
    return tiny_engine(tmp_path_factory)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    """The tiny model's vocab.txt (MiniLM's uncased WordPiece vocabulary)."""
    return tiny_model_dir(tmp_path_factory) / "vocab.txt"


@pytest.fixture(scope="module")
def int8_workdir(tmp_path_factory):
    """A tiny random BERT with the real vocabulary and a SQuAD head fitted on the hand-made set."""
    work = tmp_path_factory.mktemp("int8")
    vocab, features, model = checkpoints.int8_test_model(INT8_SEQ)
    ia.fit_squad_head(model, features)
    model.save_pretrained(work / "hf")
    return {
        "work": work,
        "model": model,
        "vocab": vocab,
        "features": features,
        "squad": ia.write_handmade_squad(work / "squad.json"),
    }


@pytest.fixture(scope="module")
def fp32_and_ptq_engines(int8_workdir):
    env = int8_workdir
    build(env, env["work"] / "fp32.engine")
    build(env, env["work"] / "int8.engine", *ptq_options(env, env["work"] / "cache"))
    return env["work"] / "fp32.engine", env["work"] / "int8.engine"
