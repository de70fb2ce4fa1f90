"""helpers.runner: engine detection, profile choice, execution against HuggingFace, graphs, timing."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import builder_varseqlen
import helpers.data_processing as dp
from engines import PASSAGE, QUESTION, SEQ_LEN, hf_model, tiny_engine, tiny_model_dir
from helpers import runner as runner_module
from helpers.cli import RunnerError
from helpers.question_answering import QuestionAnswerer
from helpers.runner import EngineRunner, NoProfileError, engine_backend
from helpers.timing_statistics import TimingSummary, percentile

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (CUDA graphs / CPU-vs-CUDA comparison)")


def random_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.zeros((batch, seq), dtype=np.int32)
    for row in range(batch):
        mask[row, : rng.integers(seq // 2, seq + 1)] = 1
    return {
        "input_ids": (rng.integers(0, vocab, (batch, seq)) * mask).astype(np.int32),
        "segment_ids": (rng.integers(0, 2, (batch, seq)) * mask).astype(np.int32),
        "input_mask": mask,
    }


def hf_logits(model_dir, inputs) -> np.ndarray:
    model = hf_model(model_dir)
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(inputs["input_ids"], dtype=torch.long),
            token_type_ids=torch.as_tensor(inputs["segment_ids"], dtype=torch.long),
            attention_mask=torch.as_tensor(inputs["input_mask"], dtype=torch.long),
        )
    return torch.stack([out.start_logits, out.end_logits], dim=-1).numpy()


# ---- statistics ------------------------------------------------------------------------------


def test_percentiles_follow_the_demo_index_rule():
    times = [float(t) for t in range(100, 0, -1)]  # 100 .. 1, unsorted
    summary = TimingSummary.from_times(4, times)
    assert summary.iterations == 100
    assert summary.total_ms == 5050.0
    assert summary.avg_ms == 50.5
    # sorted[int(100 * q)] of 1..100
    assert (summary.p50_ms, summary.p95_ms, summary.p99_ms) == (51.0, 96.0, 100.0)
    assert summary.sequences_per_second == pytest.approx(4 * 1000 / 50.5)
    assert percentile([7.0], 0.99) == 7.0


def test_summary_of_no_times_is_an_error():
    with pytest.raises(ValueError):
        TimingSummary.from_times(1, [])


# ---- engine files --------------------------------------------------------------------------


def test_engine_backend_from_header(tmp_path_factory):
    engine = tiny_engine(tmp_path_factory)
    assert engine_backend(engine.read_bytes()) == "portable"
    assert engine_backend(b"ftrt" + bytes(60)) == "tensorrt"
    with pytest.raises(RunnerError, match="not an engine file"):
        engine_backend(b'{"data": []}')
    with pytest.raises(RunnerError, match="empty"):
        engine_backend(b"")


def test_missing_truncated_and_foreign_engines(tmp_path, tmp_path_factory):
    with pytest.raises(RunnerError, match="engine file not found"):
        EngineRunner(tmp_path / "absent.engine")
    data = tiny_engine(tmp_path_factory).read_bytes()
    truncated = tmp_path / "truncated.engine"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunnerError) as info:
        EngineRunner(truncated, device="cpu")
    assert "\n" not in str(info.value)
    foreign = tmp_path / "vocab.engine"
    foreign.write_text("[PAD]\n[UNK]\n")
    with pytest.raises(RunnerError, match="not an engine file"):
        EngineRunner(foreign)


@pytest.mark.skipif(runner_module.tensorrt_available(), reason="TensorRT is installed here")
def test_tensorrt_plan_without_tensorrt_points_to_the_doctor(tmp_path):
    plan = tmp_path / "bert.engine"
    plan.write_bytes(b"ftrt" + bytes(1024))
    with pytest.raises(RunnerError, match=r"TensorRT plan.*helpers\.doctor"):
        EngineRunner(plan)


# ---- execution -----------------------------------------------------------------------------


def test_fixed_engine_matches_huggingface(tmp_path_factory):
    engine = tiny_engine(tmp_path_factory, batch_sizes=(1, 4))
    runner = EngineRunner(engine, device="cpu")
    assert not runner.varseqlen and runner.backend == "portable" and runner.device.type == "cpu"
    inputs = random_batch(3, SEQ_LEN, vocab=30522, seed=5)
    runner.activate(3, SEQ_LEN)
    out = runner.infer(inputs)
    other = runner.infer(random_batch(3, SEQ_LEN, vocab=30522, seed=6))
    assert out.shape == (3, SEQ_LEN, 2, 1, 1) and not np.allclose(out, other)  # a copy, not the reused buffer
    expected = hf_logits(tiny_model_dir(tmp_path_factory), inputs)
    np.testing.assert_allclose(out.reshape(3, SEQ_LEN, 2), expected, rtol=1e-4, atol=1e-4)


def test_profile_selection_first_covering_profile(tmp_path_factory):
    runner = EngineRunner(tiny_engine(tmp_path_factory, batch_sizes=(1, 4)), device="cpu")
    assert runner.engine.num_optimization_profiles == 2
    assert runner.select_profile(runner.input_shapes(1, SEQ_LEN)) == 0
    assert runner.select_profile(runner.input_shapes(3, SEQ_LEN)) == 1
    assert runner.select_profile(runner.input_shapes(5, SEQ_LEN)) is None
    assert runner.select_profile(runner.input_shapes(1, SEQ_LEN * 2)) is None
    assert runner.activate(2, SEQ_LEN) == 1
    with pytest.raises(NoProfileError) as info:
        runner.activate(5, SEQ_LEN)
    assert str(info.value) == f"None of the dynamic shape profiles meets the requirement batch = 5 and sequence = {SEQ_LEN}."


def test_static_engine_has_one_profile_of_its_shape(tmp_path_factory):
    runner = EngineRunner(tiny_engine(tmp_path_factory), device="cpu")
    assert runner.select_profile(runner.input_shapes(1, SEQ_LEN)) == 0
    assert runner.select_profile(runner.input_shapes(2, SEQ_LEN)) is None


def test_varseqlen_shapes_are_packed(tmp_path_factory):
    runner = EngineRunner(tiny_engine(tmp_path_factory), device="cpu")
    runner.varseqlen = True  # the shape rule only; the engine itself is fixed-length
    assert runner.input_shapes(2, 16, total_tokens=20) == {
        "input_ids": (20,),
        "segment_ids": (20,),
        "cu_seqlens": (3,),
        "max_seqlen": (16,),
    }
    assert runner.input_shapes(2, 16)["input_ids"] == (32,)


def test_time_executions_counts_and_duration(tmp_path_factory):
    runner = EngineRunner(tiny_engine(tmp_path_factory), device="cpu")
    runner.activate(1, SEQ_LEN)
    times = runner.time_executions(warm_up_runs=1, iterations=3)
    assert len(times) == 3 and all(t > 0 for t in times)

    started = time.perf_counter()
    times = runner.time_executions(warm_up_runs=0, iterations=1, duration_s=0.3)
    assert time.perf_counter() - started >= 0.3
    assert len(times) >= 1


@needs_cuda
def test_graph_replay_matches_normal_execution(tmp_path_factory):
    engine = tiny_engine(tmp_path_factory, batch_sizes=(1, 4))
    inputs = random_batch(4, SEQ_LEN, vocab=30522, seed=9)
    plain = EngineRunner(engine, device="cuda")
    plain.activate(4, SEQ_LEN)
    expected = plain.infer(inputs)
    graphed = EngineRunner(engine, device="cuda", enable_graph=True)
    graphed.activate(4, SEQ_LEN)
    first = graphed.infer(inputs)
    second_inputs = random_batch(4, SEQ_LEN, vocab=30522, seed=10)
    second = graphed.infer(second_inputs)  # replay reads the new inputs from the same buffers
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(second, plain.infer(second_inputs), rtol=1e-5, atol=1e-5)
    assert not np.allclose(first, second)


@needs_cuda
def test_device_inputs_are_copied_after_the_callers_stream_wrote_them(tmp_path_factory):
    engine = tiny_engine(tmp_path_factory, batch_sizes=(1, 4))
    runner = EngineRunner(engine, device="cuda")
    runner.activate(2, SEQ_LEN)
    source = torch.zeros(2, SEQ_LEN, dtype=torch.int32, device="cuda")
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # keeps the caller's stream busy well past the copy's launch
    source.fill_(7)
    runner.copy_inputs({"input_ids": source})
    runner.synchronize()
    assert bool((runner.buffers["input_ids"] == 7).all())


@needs_cuda
def test_cpu_and_cuda_give_the_same_answer(tmp_path_factory):
    engine = tiny_engine(tmp_path_factory)
    vocab = str(tiny_model_dir(tmp_path_factory) / "vocab.txt")
    inputs = random_batch(1, SEQ_LEN, vocab=30522, seed=3)
    outputs, answers = [], []
    for device in ("cpu", "cuda"):
        runner = EngineRunner(engine, device=device)
        assert runner.device.type == device
        answers.append(QuestionAnswerer(runner, vocab, max_seq_length=SEQ_LEN).answer_text(PASSAGE, QUESTION).text)
        outputs.append(runner.infer(inputs))
    assert answers[0] == answers[1]
    # cuDNN may use TF32 for FP32 convolutions, hence the looser tolerance.
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=2e-3, atol=2e-3)


def test_varseqlen_engine_runs_packed_through_the_same_runner(tmp_path, tmp_path_factory):
    model = tiny_model_dir(tmp_path_factory)
    engine = tmp_path / "varseqlen.engine"
    argv = ["--hf", str(model), "-o", str(engine), "-b", "1", "-s", str(SEQ_LEN), "--backend", "portable", "--device", "cpu"]
    assert builder_varseqlen.main(argv) == 0
    runner = EngineRunner(engine, device="cpu")
    assert runner.varseqlen
    answerer = QuestionAnswerer(runner, str(model / "vocab.txt"), max_seq_length=SEQ_LEN)
    features = answerer.features(dp.convert_doc_tokens(PASSAGE), QUESTION)
    lengths = [int(sum(f.input_mask)) for f in features]
    assert len(features) == 2 and lengths[1] < SEQ_LEN  # one full window, one short one
    logits = [answerer.feature_logits(feature) for feature in features]  # all first: results must not alias
    for feature, length, (start, end, _) in zip(features, lengths, logits):
        assert start.shape == end.shape == (length,)  # packed: only the real tokens
        inputs = {name: np.asarray(getattr(feature, name), dtype=np.int32)[None] for name in ("input_ids", "segment_ids", "input_mask")}
        expected = hf_logits(model, inputs)[0, :length]
        np.testing.assert_allclose(np.stack([start, end], -1), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "cu_seqlens, message",
    [([1, 5, 8], "start at 0"), ([0], "start at 0"), ([0, 6, 5, 8], "strictly increasing"), ([0, 5, 5, 8], "strictly increasing"),
     ([0, 5, 7], "ends at 7, but the batch has 8 tokens"), ([0, 1, 8], "7 tokens is more than the maximum 6")],
)
def test_packed_inputs_are_checked(cu_seqlens, message):
    with pytest.raises(RunnerError, match=message):
        runner_module.check_packed_inputs(np.array(cu_seqlens, np.int32), total_tokens=8, max_seqlen=6)


def test_good_packed_inputs_pass():
    runner_module.check_packed_inputs(np.array([0, 6, 8], np.int32), total_tokens=8, max_seqlen=6)
