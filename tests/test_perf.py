"""perf.py: the printed record per batch size (own iteration counts), --json, errors."""

from __future__ import annotations

import json
import re

import pytest

import perf
from engines import SEQ_LEN, run_main, tiny_engine
from helpers.latency import format_record, random_inputs
from helpers.runner import EngineRunner
from helpers.timing_statistics import TimingSummary

FLOAT = r"(\d+(?:\.\d+)?(?:e-?\d+)?)"
RECORD = re.compile(
    rf"Running (\d+) iterations with Batch Size: (\d+)\n\tTotal Time: {FLOAT} ms \tAverage Time: {FLOAT} ms"
    rf"\t95th Percentile Time: {FLOAT} ms\t99th Percentile Time: {FLOAT}"
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return tiny_engine(tmp_path_factory, batch_sizes=(1, 4))


def run(argv, capsys):
    return run_main(perf.main, [*argv, "--device", "cpu"], capsys)


def test_record_text_is_the_original_format():
    summary = TimingSummary.from_times(8, [2.0, 1.0, 4.0, 3.0])
    assert format_record(summary) == (
        "Running 4 iterations with Batch Size: 8\n"
        "\tTotal Time: 10.0 ms \tAverage Time: 2.5 ms\t95th Percentile Time: 4.0 ms\t99th Percentile Time: 4.0"
    )


def test_random_inputs_follow_numpy_seed(engine):
    import numpy as np

    runner = EngineRunner(engine, device="cpu")
    inputs = random_inputs(runner, 2, 8, seed=12345)
    np.random.seed(12345)
    expected_ids = np.random.randint(0, 30522, (2, 8), dtype=np.int32)
    expected_segments = np.random.randint(0, 2, (2, 8), dtype=np.int32)
    np.testing.assert_array_equal(inputs["input_ids"], expected_ids)
    np.testing.assert_array_equal(inputs["segment_ids"], expected_segments)
    np.testing.assert_array_equal(inputs["input_mask"], np.ones((2, 8), np.int32))


def test_records_per_batch_size_and_json(engine, capsys, tmp_path):
    report = tmp_path / "perf.json"
    status, out, err = run(["-e", str(engine), "-b", "4", "-b", "1", "-s", str(SEQ_LEN), "-i", "3", "-w", "1", "--json", str(report)], capsys)
    assert status == 0, err
    records = RECORD.findall(out)
    assert out == "".join(f"{m.group(0)}\n" for m in RECORD.finditer(out))  # nothing else on CPU
    assert [int(r[1]) for r in records] == [1, 4]  # ascending batch sizes
    data = json.loads(report.read_text())
    assert data["format_version"] == 1 and data["backend"] == "portable" and data["device"] == "cpu"
    assert data["engine"] == str(engine) and data["sequence_length"] == SEQ_LEN and data["peak_gpu_memory_mib"] is None
    for record, result in zip(records, data["results"]):
        iterations, batch, total, avg, p95, p99 = int(record[0]), int(record[1]), *map(float, record[2:])
        assert iterations == result["iterations"] == 3 and batch == result["batch_size"]
        assert (total, avg, p95, p99) == (result["total_ms"], result["avg_ms"], result["p95_ms"], result["p99_ms"])
        assert avg == pytest.approx(total / iterations)
        assert result["p50_ms"] <= p95 <= p99
        assert result["sequences_per_second"] == pytest.approx(batch * 1000 / avg)


def test_each_batch_size_keeps_its_own_iteration_count(engine, capsys, monkeypatch):
    # The original printed every record with the last batch size's count and divided by it.
    timed = iter([[1.0, 2.0, 3.0], [2.0] * 5])
    monkeypatch.setattr(EngineRunner, "time_executions", lambda self, warm_up, iterations, duration: next(timed))
    status, out, _ = run(["-e", str(engine), "-b", "1", "-b", "4", "-s", str(SEQ_LEN)], capsys)
    assert status == 0
    assert out == (
        "Running 3 iterations with Batch Size: 1\n"
        "\tTotal Time: 6.0 ms \tAverage Time: 2.0 ms\t95th Percentile Time: 3.0 ms\t99th Percentile Time: 3.0\n"
        "Running 5 iterations with Batch Size: 4\n"
        "\tTotal Time: 10.0 ms \tAverage Time: 2.0 ms\t95th Percentile Time: 2.0 ms\t99th Percentile Time: 2.0\n"
    )


def test_duration_extends_the_timed_runs(engine, capsys):
    status, out, _ = run(["-e", str(engine), "-b", "1", "-s", str(SEQ_LEN), "-i", "1", "-w", "0", "-d", "0.3"], capsys)
    assert status == 0
    (count, _batch, total, avg, *_), = RECORD.findall(out)
    assert int(count) >= 1 and float(avg) == pytest.approx(float(total) / int(count))
    assert float(total) >= 200  # most of the 0.3 s is spent inside the timed executions


def test_batch_without_profile(engine, capsys):
    status, out, err = run(["-e", str(engine), "-b", "5", "-s", str(SEQ_LEN), "-i", "1"], capsys)
    assert status == 1 and out == ""
    assert err == f"perf.py: error: None of the dynamic shape profiles meets the requirement batch = 5 and sequence = {SEQ_LEN}.\n"



def test_every_batch_is_checked_before_the_inputs_are_made(engine, capsys):
    """Random inputs for a batch this large would take 2**40 bytes: the profile check comes first."""
    huge = 2**32
    status, out, err = run(["-e", str(engine), "-b", "1", "-b", str(huge), "-s", str(SEQ_LEN), "-i", "1"], capsys)
    assert status == 1 and out == ""
    assert err.startswith(f"perf.py: error: None of the dynamic shape profiles meets the requirement batch = {huge} ")


@pytest.mark.parametrize("duration", ["nan", "inf", "-1", "-0.5"])
def test_duration_must_be_finite_and_not_negative(engine, capsys, duration):
    """NaN ended timing at once, inf never: both used to be accepted."""
    status, out, err = run(["-e", str(engine), "-s", str(SEQ_LEN), "-i", "1", "-d", duration], capsys)
    assert status == 1 and out == ""
    assert err == f"perf.py: error: -d/--duration must be a finite number of seconds, 0 or more, got {float(duration)}\n"


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_random_seed_outside_numpys_range(engine, capsys, seed):
    """numpy's seed() raised a ValueError traceback."""
    status, out, err = run(["-e", str(engine), "-s", str(SEQ_LEN), "-i", "1", "-r", seed], capsys)
    assert status == 1 and out == ""
    assert err == f"perf.py: error: -r/--random-seed must be from 0 to 4294967295 (numpy's seed range), got {seed}\n"


def test_unknown_options_are_ignored_with_a_warning(engine, capsys):
    status, out, err = run(["-e", str(engine), "-s", str(SEQ_LEN), "-i", "1", "-w", "0", "--iteration", "2", "--no-such-option", "x"], capsys)
    assert status == 0, err
    assert [int(r[0]) for r in RECORD.findall(out)] == [2]  # an unambiguous prefix is accepted
    assert err.endswith(": warning: ignoring unknown arguments: --no-such-option x\n") and err.count("\n") == 1


def test_unwritable_json_is_refused_before_running(engine, capsys, tmp_path):
    status, out, err = run(["-e", str(engine), "-i", "1", "-s", str(SEQ_LEN), "--json", str(tmp_path / "no" / "perf.json")], capsys)
    assert status == 1 and out == "" and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_enable_graph_on_cpu_runs_plainly(engine, capsys):
    status, out, _ = run(["-e", str(engine), "-s", str(SEQ_LEN), "-i", "2", "-w", "0", "--enable-graph"], capsys)
    assert status == 0 and len(RECORD.findall(out)) == 1


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (peak GPU memory)")
def test_peak_memory_is_the_inferences_not_earlier_scratch(engine):
    import torch

    from helpers.latency import benchmark, peak_memory_mib

    runner = EngineRunner(engine, device="cuda", enable_graph=True)
    before = torch.cuda.memory_allocated()  # whatever earlier tests in this process still hold
    scratch = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # like a GEMM tuner's operands
    del scratch
    benchmark(runner, [1], SEQ_LEN, warm_up_runs=1, iterations=2, duration_s=0.0, seed=0)
    peak = peak_memory_mib(runner)
    assert peak is not None and before < peak * 2**20 < before + (256 << 20)
