"""Where outputs go (helpers.files): regular files atomically, symlinks followed, character devices,
FIFOs and the process's own stdout written directly, directories and empty paths refused early,
through the helper and through the scripts that write engines, predictions and reports."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import builder
from engines import REPO_ROOT, SEQ_LEN, run_main, tiny_model_dir
from helpers import files


def scratch_device(folder: Path, name: str, minor: int) -> Path:
    """A character device node of the memory driver (minor 3 = null, 7 = full) in ``folder``."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    path = folder / name
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except PermissionError:
        pytest.skip("this container may not make device nodes")
    return path


def only_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_new_and_existing_regular_files_are_replaced_whole(tmp_path):
    target = tmp_path / "out.json"
    files.write_text_atomically(target, "first")
    old_inode = target.stat().st_ino
    files.write_text_atomically(str(target), "second")
    assert target.read_text() == "second" and target.stat().st_ino != old_inode  # renamed over, not rewritten
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert only_entries(tmp_path) == ["out.json"]


def test_symlinks_are_followed_and_stay(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "engine.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    chain = tmp_path / "chain.bin"
    chain.symlink_to(link)
    files.write_bytes_atomically(chain, b"new")
    assert chain.is_symlink() and link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new"
    assert only_entries(tmp_path / "real") == ["engine.bin"] and only_entries(tmp_path) == ["chain.bin", "link.bin", "real"]
    dangling = tmp_path / "dangling.bin"
    dangling.symlink_to(tmp_path / "real" / "created.bin")
    files.write_bytes_atomically(dangling, b"created")
    assert dangling.is_symlink() and (tmp_path / "real" / "created.bin").read_bytes() == b"created"


def test_character_devices_are_written_directly(tmp_path):
    null = scratch_device(tmp_path, "null", 3)
    full = scratch_device(tmp_path, "full", 7)
    files.check_output_path(null)
    files.write_bytes_atomically(null, b"x" * 100_000)
    with pytest.raises(files.OutputPathError) as err:
        files.write_text_atomically(full, "{}")
    assert str(err.value) == f"cannot write {full}: No space left on device"
    for node in (null, full):
        assert stat.S_ISCHR(node.stat().st_mode)  # still the device, not a file put in its place
    assert only_entries(tmp_path) == ["full", "null"]


def test_fifos_are_written_directly(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    files.write_bytes_atomically(fifo, b"through the pipe")
    reader.join(timeout=30)
    assert received == [b"through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)
    assert only_entries(tmp_path) == ["pipe"]


WRITE_TO_OWN_STDOUT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from helpers import files; "
    "print('printed first'); files.write_text_atomically('/dev/stdout', 'written'); print(' then this')"
)


def test_own_stdout_is_written_through_its_descriptor(tmp_path):
    piped = subprocess.run([sys.executable, "-c", WRITE_TO_OWN_STDOUT, str(REPO_ROOT)], capture_output=True, text=True)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == "printed first\nwritten then this\n"
    # Redirected to a file, the file keeps everything printed around the output, in order.
    redirected = tmp_path / "log.txt"
    with open(redirected, "w") as stdout:
        done = subprocess.run([sys.executable, "-c", WRITE_TO_OWN_STDOUT, str(REPO_ROOT)], stdout=stdout)
    assert done.returncode == 0 and redirected.read_text() == "printed first\nwritten then this\n"


@pytest.mark.parametrize(
    "name, reason",
    [
        ("", "cannot write '': the output path is empty"),
        ("{tmp}", "cannot write {tmp}: it is a directory"),
        ("{tmp}/", "cannot write {tmp}/: the path names a directory"),
        ("{tmp}/no/such/out.json", "cannot write {tmp}/no/such/out.json: output folder does not exist ({tmp}/no/such)"),
    ],
)
def test_directories_empty_paths_and_missing_folders_are_refused(tmp_path, name, reason):
    path = name.format(tmp=tmp_path)
    expected = reason.format(tmp=tmp_path)
    with pytest.raises(files.OutputPathError) as checked:
        files.check_output_path(path)
    with pytest.raises(files.OutputPathError) as written:
        files.write_text_atomically(path, "x")
    assert str(checked.value) == str(written.value) == expected
    assert only_entries(tmp_path) == []


def test_sockets_are_refused(tmp_path):
    import socket

    path = tmp_path / "s"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(files.OutputPathError, match="neither a regular file, a character device nor a FIFO"):
            files.check_output_path(path)
    finally:
        server.close()


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        files.write_bytes_atomically(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old" and only_entries(tmp_path) == ["out.bin"]


# ---- through the scripts -----------------------------------------------------------------------


def run_script(script: str, *args, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, text=True,
        cwd=REPO_ROOT, timeout=600,
    )


def test_builder_refuses_a_directory_or_empty_output_before_reading_weights(tmp_path, capsys):
    missing_weights = tmp_path / "missing-model"  # reading it would fail with another message
    for output, message in ((tmp_path, f"cannot write {tmp_path}: it is a directory"), ("", "cannot write '': the output path is empty")):
        status, out, err = run_main(builder.main, ["--hf", str(missing_weights), "-o", str(output), "--backend", "portable"], capsys)
        assert status == 1 and err.splitlines()[-1] == f"error: {message}" and err.count("error") == 1, err
    status, _, err = run_main(
        builder.main, ["--hf", str(missing_weights), "-o", str(tmp_path / "x.engine"), "-tcf", str(tmp_path), "--backend", "portable"], capsys,
    )
    assert status == 1 and err.splitlines()[-1] == f"error: cannot write {tmp_path}: it is a directory"
    assert only_entries(tmp_path) == []


@pytest.mark.parametrize("script", ["perf.py", "perf_varseqlen.py"])
def test_perf_refuses_an_empty_json_path_before_loading_the_engine(tmp_path, script):
    result = run_script(script, "-e", tmp_path / "missing.engine", "--json", "")
    assert result.returncode == 1 and result.stderr == f"{script}: error: cannot write '': the output path is empty\n"


def test_perf_json_to_stdout_and_to_a_full_device(engine, tmp_path):
    result = run_script("perf.py", "-e", engine, "-s", SEQ_LEN, "-i", 1, "-w", 0, "--device", "cpu", "--json", "/dev/stdout")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["tool"] == "perf.py" and report["results"][0]["iterations"] == 1
    full = scratch_device(tmp_path, "full", 7)
    result = run_script("perf.py", "-e", engine, "-s", SEQ_LEN, "-i", 1, "-w", 0, "--device", "cpu", "--json", full)
    assert result.returncode == 1 and result.stderr == f"perf.py: error: cannot write {full}: No space left on device\n"
    assert stat.S_ISCHR(full.stat().st_mode)


def test_inference_predictions_through_a_symlink(engine, tmp_path, tmp_path_factory, capsys):
    import inference
    from squad_fixtures import make_dataset, make_qa, write_json

    gold = write_json(tmp_path / "dev.json", make_dataset([("The cat sat on the mat.", [make_qa("q1", "Where did the cat sit?", ["mat"])])]))
    (tmp_path / "out").mkdir()
    link = tmp_path / "predictions.json"
    link.symlink_to(tmp_path / "out" / "real.json")
    vocab = tiny_model_dir(tmp_path_factory) / "vocab.txt"
    status, out, err = run_main(
        inference.main, ["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-sq", str(gold), "-o", str(link), "--device", "cpu"], capsys,
    )
    assert status == 0, err
    assert link.is_symlink() and set(json.loads((tmp_path / "out" / "real.json").read_text())) == {"q1"}
