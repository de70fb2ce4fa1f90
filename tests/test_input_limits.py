"""Inputs read whole are bounded by what their kind allows: an engine by its own preamble's sizes,
text, SQuAD, vocabulary, configuration and cache files by the documented maxima (README "Untrusted
input, limits, outputs and Ctrl-C").  A character device such as /dev/zero or an endless pipe is a
one-line error after at most that much, never an exhausted memory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import builder
import helpers.tokenization as tokenization
import inference
from bert_weights.config import read_json
from bert_weights.errors import ConfigError
from engines import PASSAGE, QUESTION, REPO_ROOT, SEQ_LEN, run_main, tiny_model_dir
from helpers import files, runner
from helpers.calibrator import read_calibration_cache_file
from helpers.cli import RunnerError
from helpers.portable.calibration import CalibrationError
from helpers.portable.engine_file import PREAMBLE_BYTES


def zero_device(folder: Path) -> Path:
    """A scratch node of the kernel's zero device (endless zero bytes) in ``folder``."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    path = folder / "zero"
    try:
        os.mknod(path, 0o444 | stat.S_IFCHR, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("this container may not make device nodes")
    return path


class EndlessPipe:
    """A FIFO whose writer sends ``head`` and then ``filler`` until the reader closes it; ``sent``
    counts the bytes the reader took (give or take one pipe buffer)."""

    def __init__(self, folder: Path, head: bytes, filler: bytes = b"\0" * 65536, endless: bool = True):
        self.path = folder / "pipe"
        os.mkfifo(self.path)
        self.sent = 0
        self._thread = threading.Thread(target=self._write, args=(head, filler, endless), daemon=True)
        self._thread.start()

    def _write(self, head: bytes, filler: bytes, endless: bool) -> None:
        with open(self.path, "wb", buffering=0) as pipe:
            try:
                pipe.write(head)
                self.sent += len(head)
                while endless:
                    self.sent += pipe.write(filler)
            except BrokenPipeError:
                pass

    def join(self) -> None:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()


def test_read_limited_takes_the_limit_and_refuses_one_byte_more(tmp_path):
    path = tmp_path / "text"
    path.write_bytes(b"x" * 100)
    assert files.read_limited(path, 100, "passage file") == b"x" * 100
    with pytest.raises(files.InputTooLargeError) as err:
        files.read_limited(path, 99, "passage file")
    assert err.value.errno == 27 and str(err.value) == f"{path}: larger than 0 MiB, the most read for a passage file"


@pytest.mark.parametrize(
    "inputs, message",
    [
        (["-pf", "{zero}", "-q", QUESTION], "cannot read passage file {zero}: larger than 16 MiB, the most read for a passage file"),
        (["-p", PASSAGE, "-qf", "{zero}"], "cannot read question file {zero}: larger than 16 MiB, the most read for a question file"),
        (["-sq", "{zero}"], "not a usable SQuAD file: {zero}: cannot read file (larger than 256 MiB, the most read for a SQuAD JSON file)"),
    ],
)
def test_inference_reads_a_zero_device_up_to_the_limit(engine, vocab, tmp_path, capsys, inputs, message):
    zero = zero_device(tmp_path)
    argv = ["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "--device", "cpu", "-o", str(tmp_path / "predictions.json"),
            *(item.format(zero=zero) for item in inputs)]
    status, out, err = run_main(inference.main, argv, capsys)
    assert status == 1 and out == "" and err == f"inference.py: error: {message.format(zero=zero)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zero"]


def test_a_zero_device_is_not_an_engine_after_its_first_bytes(vocab, tmp_path, capsys):
    zero = zero_device(tmp_path)
    status, out, err = run_main(inference.main, ["-e", str(zero), "-v", str(vocab), "-p", PASSAGE, "-q", QUESTION], capsys)
    assert status == 1 and out == ""
    assert err == "inference.py: error: not an engine file: neither a portable engine nor a TensorRT plan (wrong file, or truncated?)\n"


def test_other_inputs_read_a_zero_device_up_to_their_limit(tmp_path):
    zero = zero_device(tmp_path)
    with pytest.raises(tokenization.VocabError, match="cannot read vocabulary \\(larger than 64 MiB, the most read for a vocabulary\\)"):
        tokenization.load_vocab(str(zero))
    with pytest.raises(ConfigError, match="larger than 16 MiB, the most read for a configuration file"):
        read_json(str(zero))
    with pytest.raises(CalibrationError, match="larger than 256 MiB, the most read for a calibration cache"):
        read_calibration_cache_file(str(zero))
    result = subprocess.run([sys.executable, str(REPO_ROOT / "squad" / "evaluate-v1.1.py"), str(zero), str(zero), "90"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == f"error: {zero}: cannot read file (larger than 256 MiB, the most read for a SQuAD JSON file)\n"


def test_builder_reads_a_zero_device_timing_cache_up_to_the_limit(tmp_path, tmp_path_factory, capsys):
    zero = zero_device(tmp_path)
    model = tiny_model_dir(tmp_path_factory)
    status, _, err = run_main(builder.main, ["--hf", str(model), "-o", str(tmp_path / "x.engine"), "-s", "16", "-tcf", str(zero),
                                             "--backend", "portable", "--device", "cpu"], capsys)
    assert status == 1 and err.splitlines()[-1] == f"error: {zero}: larger than 256 MiB, the most read for a timing cache"
    assert not (tmp_path / "x.engine").exists()


def test_an_engine_from_a_pipe_is_read_to_its_stated_size(engine, tmp_path):
    data = engine.read_bytes()
    whole = EndlessPipe(tmp_path, data, endless=False)
    loaded = runner.EngineRunner(whole.path, device="cpu")
    whole.join()
    assert loaded.io_names and whole.sent == len(data)
    os.unlink(whole.path)
    # Followed by endless bytes: read to the stated size plus one, which shows the trailing data.
    endless = EndlessPipe(tmp_path, data)
    with pytest.raises(RunnerError, match="corrupt portable engine: 1 unexpected trailing bytes"):
        runner.EngineRunner(endless.path, device="cpu")
    endless.join()
    assert endless.sent <= len(data) + 2 * 65536 + 65536  # what the pipe buffered, not more


def test_a_stream_that_is_not_an_engine_is_read_no_further_than_its_first_bytes(tmp_path):
    pipe = EndlessPipe(tmp_path, b"{\"not\": \"an engine\"}")
    data = runner.read_engine_file(pipe.path)
    pipe.join()
    assert len(data) == PREAMBLE_BYTES
    with pytest.raises(RunnerError, match="not an engine file"):
        runner.engine_backend(data)
    assert pipe.sent <= PREAMBLE_BYTES + 3 * 65536


def test_a_tensorrt_plan_from_a_pipe_is_read_up_to_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "TENSORRT_PLAN_MAX_BYTES", 1 << 20)
    pipe = EndlessPipe(tmp_path, b"ftrt")
    with pytest.raises(RunnerError) as err:
        runner.read_engine_file(pipe.path)
    pipe.join()
    assert str(err.value) == f"engine file {pipe.path} holds more than 1 MiB, the most read of a TensorRT plan from a pipe or device"
    assert pipe.sent <= (1 << 20) + 3 * 65536
