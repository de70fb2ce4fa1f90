"""The Triton model repository writer and the serving tools' checks, without a server: configs as
Triton parses them, options refused before anything is written, and the clients' start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import engines

pytest.importorskip("tritonclient.grpc")

from helpers.cli import RunnerError  # noqa: E402
from serving import load_test, repository, serve  # noqa: E402

ENGINE_BATCH = 8


@pytest.fixture(scope="module")
def fixed_engine(tmp_path_factory) -> Path:
    return engines.tiny_engine(tmp_path_factory, batch_sizes=(1, ENGINE_BATCH))


def parse_config(text: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_tensorrt_plans_get_triton_ragged_batching_and_gpu_instance_groups():
    options = repository.RepositoryOptions(instances=2, gpus=(0, 1), max_queue_delay_us=500)
    packed = parse_config(repository.engine_config(repository.EngineSignature("tensorrt", True, 384, 64, "TYPE_FP16"), options, 64))
    assert packed.platform == "tensorrt_plan" and packed.max_batch_size == 64
    assert all(i.allow_ragged_batch for i in packed.input) and [i.name for i in packed.input] == ["input_ids", "segment_ids"]
    kinds = {tuple(b.target_name): model_config_kind(b.kind) for b in packed.batch_input}
    assert kinds == {("cu_seqlens",): "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", ("max_seqlen",): "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE"}
    assert [(g.count, list(g.gpus)) for g in packed.instance_group] == [(2, [0, 1])]
    assert packed.dynamic_batching.max_queue_delay_microseconds == 500
    fixed = parse_config(repository.engine_config(repository.EngineSignature("tensorrt", False, 128, 8, "TYPE_FP32"), options, 4))
    assert [list(i.dims) for i in fixed.input] == [[128]] * 3 and list(fixed.output[0].dims) == [128, 2, 1, 1]
    assert fixed.max_batch_size == 4 and not fixed.parameters


def model_config_kind(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.BatchInput.Kind.Name(value)


def test_repository_options_are_checked_against_the_engine(fixed_engine, tmp_path, tmp_path_factory):
    vocab = engines.tiny_model_dir(tmp_path_factory) / "vocab.txt"
    bad = {
        "batches of 1 to 8": repository.RepositoryOptions(device="cpu", max_batch_size=9),
        "no profile of this engine runs sequence length 128": repository.RepositoryOptions(device="cpu", sequence_length=128),
        "--device must be": repository.RepositoryOptions(device="tpu"),
        "--gpus needs --device cuda": repository.RepositoryOptions(device="cpu", gpus=(0,)),
        "--instances": repository.RepositoryOptions(device="cpu", instances=0),
    }
    for message, options in bad.items():
        with pytest.raises(RunnerError, match=message):
            repository.write_repository(fixed_engine, vocab, tmp_path / "repo", options)
        assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(RunnerError, match="not an empty folder"):
        repository.write_repository(fixed_engine, vocab, tmp_path / "full", repository.RepositoryOptions(device="cpu"))
    signature = repository.write_repository(fixed_engine, vocab, tmp_path / "repo", repository.RepositoryOptions(device="cpu", max_batch_size=4))
    assert signature == repository.EngineSignature("portable", False, engines.SEQ_LEN, ENGINE_BATCH, "TYPE_FP32")
    config = parse_config((tmp_path / "repo" / "bert_engine" / "config.pbtxt").read_text())
    assert config.backend == "python" and config.max_batch_size == 4
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["bert_engine", "bert_qa"]


def test_the_clients_start_without_the_engine_libraries():
    """Asking one question, or each load-test client process, does not import torch, TensorRT or transformers."""
    code = "import sys, serving.client, serving.load_test; print(sorted({'torch', 'tensorrt', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=engines.REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_serve_and_load_test_refuse_what_they_cannot_do(tmp_path, capsys):
    status, _, err = engines.run_main(serve.main, ["--model-repository", str(tmp_path / "missing")], capsys)
    assert status == 1 and "model repository not found" in err
    status, _, err = engines.run_main(load_test.main, ["--url", "10.1.2.3:8000", "--requests", "1"], capsys)
    assert status == 1 and "loopback" in err
    status, _, err = engines.run_main(load_test.main, ["--url", "127.0.0.1:1", "--requests", "0"], capsys)
    assert status == 1 and "--requests" in err
