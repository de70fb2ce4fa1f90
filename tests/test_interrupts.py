"""Ctrl-C (SIGINT) in the middle of a script: one line on stderr instead of a KeyboardInterrupt
traceback, exit status 130, and no output file, partial or temporary, left behind.

Each script is stopped while it waits to read a FIFO that the test holds open without writing:
the signal then certainly arrives inside main(), in the middle of the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engines import REPO_ROOT, SEQ_LEN, tiny_model_dir

from helpers.cli import INTERRUPTED_STATUS


def interrupt_while_reading(fifo: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``argv``, wait until it has ``fifo`` open, send SIGINT, return the finished process."""
    os.mkfifo(fifo)
    holder = os.open(fifo, os.O_RDWR)  # a writer that never writes: the script's read blocks
    try:
        process = subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not any(os.path.realpath(link) == str(fifo) for link in _open_files(process.pid)):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the script never opened the FIFO"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        os.close(holder)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _open_files(pid: int) -> list[str]:
    folder = Path(f"/proc/{pid}/fd")
    try:
        return [os.readlink(folder / name) for name in os.listdir(folder)]
    except OSError:  # the process is starting or finishing
        return []


def assert_interrupted(result: subprocess.CompletedProcess, script: str) -> None:
    assert result.returncode == INTERRUPTED_STATUS, result.stderr
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"{script}: interrupted"


def test_inference_reading_its_passage(engine, tmp_path, tmp_path_factory):
    vocab = tiny_model_dir(tmp_path_factory) / "vocab.txt"
    result = interrupt_while_reading(
        tmp_path / "passage", [str(REPO_ROOT / "inference.py"), "-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN),
                               "-pf", str(tmp_path / "passage"), "-q", "What?", "--device", "cpu"], tmp_path)
    assert_interrupted(result, "inference.py")
    assert result.stdout == "" and result.stderr == "inference.py: interrupted\n"


def test_perf_reading_its_engine_writes_no_report(tmp_path):
    report = tmp_path / "report.json"
    result = interrupt_while_reading(
        tmp_path / "engine", [str(REPO_ROOT / "perf.py"), "-e", str(tmp_path / "engine"), "--json", str(report)], tmp_path)
    assert_interrupted(result, "perf.py")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]


def test_builder_reading_its_timing_cache_writes_no_engine(tmp_path, tmp_path_factory):
    model = tiny_model_dir(tmp_path_factory)
    out = tmp_path / "out"
    out.mkdir()
    result = interrupt_while_reading(
        tmp_path / "cache", [str(REPO_ROOT / "builder.py"), "--hf", str(model), "-o", str(out / "bert.engine"), "-s", "16",
                             "-tcf", str(tmp_path / "cache"), "--backend", "portable", "--device", "cpu"], tmp_path)
    assert_interrupted(result, "builder.py")
    assert list(out.iterdir()) == []


def test_squad_evaluator_reading_its_dataset(tmp_path):
    result = interrupt_while_reading(
        tmp_path / "dev.json", [str(REPO_ROOT / "squad" / "evaluate-v1.1.py"), str(tmp_path / "dev.json"), "p.json", "90"], tmp_path)
    assert_interrupted(result, "evaluate-v1.1.py")
    assert result.stdout == ""
