"""inference_c.py: the same answers, printed format and option rule as inference.py,
and the infer_c path (TensorRT plans) driven through a stand-in infer_c module on CPU."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import types

import numpy as np
import pytest
from engines import PASSAGE, QUESTION, REPO_ROOT, SEQ_LEN, run_main
from squad_fixtures import make_qa, write_squad_file

import inference
import inference_c
from helpers.runner import EngineRunner

# The figures that differ from run to run.
TIMING_LINE = re.compile(r"^(Running inference in |Network time: |End-to-end time: )\d+\.\d{3}", re.MULTILINE)
# A TensorRT plan as far as the header check is concerned.
TENSORRT_PLAN_BYTES = b"ftrt" + bytes(60)


def without_timings(text: str) -> str:
    return TIMING_LINE.sub(r"\1<t>", text)


def question_args(engine, vocab) -> list[str]:
    return ["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-p", *PASSAGE.split(" "), "-q", *QUESTION.split(" ")]


@pytest.fixture(scope="module")
def inference_py_output(engine, vocab):
    """What inference.py prints for the README-style question (captured once)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert inference.main([*question_args(engine, vocab), "--device", "cpu"]) == 0
    return buffer.getvalue()


@pytest.mark.parametrize("graph", [[], ["--enable-graph"]])
def test_portable_engine_prints_what_inference_py_prints(engine, vocab, inference_py_output, capsys, graph):
    status, out, err = run_main(inference_c.main, [*question_args(engine, vocab), "--device", "cpu", *graph], capsys)
    assert status == 0, err
    assert out.startswith(f"\nPassage: {PASSAGE}\n\nQuestion: {QUESTION}\n{'-' * 24}\nRunning inference in ")
    assert re.search(r"^Answer: '.*'\nWith probability: \d+\.\d{3}$", out, re.MULTILINE)
    assert without_timings(out) == without_timings(inference_py_output)


def test_squad_mode_counts_examples_and_writes_inference_py_predictions(engine, vocab, capsys, tmp_path):
    questions = [make_qa("q1", "What is TensorRT?"), make_qa("q2", "What does it include?"), make_qa("q3", "Who runs it?")]
    squad = write_squad_file(tmp_path / "dev.json", [(PASSAGE, questions[:2]), ("NVIDIA GPUs run TensorRT.", questions[2:])])
    common = ["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-sq", squad, "--device", "cpu"]

    status, out, err = run_main(inference_c.main, [*common, "-o", str(tmp_path / "c.json")], capsys)
    assert status == 0, err
    assert out == (
        "Processing example 1 of 3\rProcessing example 2 of 3\rProcessing example 3 of 3\r"
        f"\nOutput dump to {tmp_path / 'c.json'}\n"
    )
    status, _, err = run_main(inference.main, [*common, "-o", str(tmp_path / "py.json")], capsys)
    assert status == 0, err
    c_text = (tmp_path / "c.json").read_text()
    assert c_text == (tmp_path / "py.json").read_text()
    assert list(json.loads(c_text)) == ["q1", "q2", "q3"]


@pytest.mark.parametrize("option", [["--doc-stride", "64"], ["-b", "2"], ["--no-such-option"]])
def test_unknown_options_are_ignored_with_a_warning(engine, vocab, inference_py_output, capsys, option):
    """The rule of every runner (the original's inference.py ignored them, its inference_c.py refused
    them): inference.py's options that this front end lacks are named, not silently dropped."""
    status, out, err = run_main(inference_c.main, [*question_args(engine, vocab), "--device", "cpu", *option], capsys)
    assert status == 0, err
    assert re.fullmatch(f"\\S+: warning: ignoring unknown arguments: {re.escape(' '.join(option))}\n", err), err
    assert without_timings(out) == without_timings(inference_py_output)


def test_tensorrt_plan_without_infer_c_is_one_line_error(vocab, capsys, tmp_path, monkeypatch):
    plan = tmp_path / "bert.engine"
    plan.write_bytes(TENSORRT_PLAN_BYTES)
    monkeypatch.setitem(sys.modules, "infer_c", None)  # as if build/ held no module
    status, out, err = run_main(inference_c.main, ["-e", str(plan), "-v", str(vocab), "-p", "x", "-q", "y"], capsys)
    assert status == 1
    assert err.count("\n") == 1 and err.startswith("inference_c.py: error: ") and "infer_c/build.sh" in err


def test_tensorrt_plan_from_the_command_line_is_one_line_error(vocab, tmp_path):
    """Through the real import: infer_c missing (the usual case here) or, where built, no GPU."""
    plan = tmp_path / "bert.engine"
    plan.write_bytes(TENSORRT_PLAN_BYTES)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "inference_c.py"), "-e", str(plan), "-v", str(vocab), "-p", "x", "-q", "y"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("inference_c.py: error: "), result.stderr


def fake_infer_c(portable_engine, packed_output: bool, calls: list):
    """A stand-in for the C++ module: bert_inf computes the logits with the portable engine and
    returns them in the C++ module's layout (fixed [maxB, S, 2, 1, 1] or packed [maxB*S*2])."""

    class BertInf:
        def __init__(self, engine_path, max_batch, max_seq_len, enable_graph):
            calls.append(("init", max_batch, max_seq_len, enable_graph))
            self.runner = EngineRunner(portable_engine, device="cpu")
            self.max_seq_len = max_seq_len

        def prepare(self, batch_size):
            calls.append(("prepare", batch_size))
            self.runner.activate(batch_size, self.max_seq_len)

        def run(self, input_ids, segment_ids, input_mask):
            calls.append(("run", input_ids.dtype, input_ids.shape))
            logits = self.runner.infer(
                {"input_ids": input_ids, "segment_ids": segment_ids, "input_mask": input_mask}
            ).astype(np.float32)
            if packed_output:
                return np.concatenate([logits[0, :, 0].ravel(), logits[0, :, 1].ravel()])
            return logits

    return types.SimpleNamespace(bert_inf=BertInf)


@pytest.mark.parametrize("packed_output", [False, True], ids=["fixed", "varseqlen"])
def test_tensorrt_plans_run_through_infer_c(
    engine, vocab, inference_py_output, capsys, tmp_path, monkeypatch, packed_output
):
    plan = tmp_path / "bert.engine"
    plan.write_bytes(TENSORRT_PLAN_BYTES)
    calls: list = []
    monkeypatch.setitem(sys.modules, "infer_c", fake_infer_c(engine, packed_output, calls))
    status, out, err = run_main(inference_c.main, [*question_args(plan, vocab), "--enable-graph"], capsys)
    assert status == 0, err
    assert without_timings(out) == without_timings(inference_py_output)
    assert calls[:2] == [("init", 1, SEQ_LEN, True), ("prepare", 1)]
    assert calls[2:] and all(call == ("run", np.dtype(np.int32), (SEQ_LEN,)) for call in calls[2:])


def test_interactive_mode_prints_only_the_framed_blocks(engine, vocab, capsys, monkeypatch, inference_py_output):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\n  quit \n"))
    argv = ["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-p", *PASSAGE.split(" "), "--device", "cpu"]
    status, out, err = run_main(inference_c.main, argv, capsys)
    assert status == 0, err
    prompt = "Question (to exit, type one of ['exit', 'quit']): "
    framed_block = inference_py_output.split(f"Question: {QUESTION}\n", 1)[1]
    assert without_timings(out) == without_timings(prompt + framed_block + prompt)
