"""The one way the suite writes its output files and reads whole input files.

Outputs (engines, caches, predictions, benchmark tables) go where the user's path points:

* a regular file or a new path is written to a temporary file next to it, synced, then renamed
  over it, so a reader never sees half a file and a failure leaves the old file (or none);
* a symbolic link is followed: its final target is replaced that way, the link stays;
* a character device or a FIFO (``/dev/stdout``, ``/dev/null``, a named pipe) is written
  directly, and so is this process's own standard output or error, through its descriptor;
* a directory, an empty path, a missing folder or any other kind of file is refused.

``check_output_path`` applies the same rules without writing, so that scripts can refuse a bad
path before any long work.  Every refusal and write failure is an :class:`OutputPathError`
whose message names the user's path, never a temporary file.

Inputs read whole by the suite itself are read with :func:`read_limited`, which stops at a
stated maximum, so that a device such as ``/dev/zero`` or an endless pipe cannot exhaust memory.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import tempfile
from pathlib import Path

MIB = 1 << 20
# The most read of each kind of input (the README's "Input limits" lists them): several times the
# largest real file of the kind (SQuAD v2.0's training set is 40 MiB, BERT vocabularies < 1 MiB).
TEXT_FILE_MAX_BYTES = 16 * MIB
"""A passage or question file (-pf, -qf)."""
SQUAD_FILE_MAX_BYTES = 256 * MIB
"""A SQuAD dataset, prediction or no-answer probability file (JSON)."""
VOCAB_FILE_MAX_BYTES = 64 * MIB
"""A vocabulary (vocab.txt)."""
CONFIG_FILE_MAX_BYTES = 16 * MIB
"""A model configuration (bert_config.json, config.json)."""
CACHE_FILE_MAX_BYTES = 256 * MIB
"""A timing cache (-tcf) or an INT8 calibration cache."""


class OutputPathError(OSError):
    """An output path that cannot be written; ``str()`` is the one-line reason naming the path."""

    def __init__(self, path: str, reason: str, code: int | None = None):
        super().__init__(code, f"cannot write {path}: {reason}")

    def __str__(self) -> str:
        return str(self.strerror)


class InputTooLargeError(OSError):
    """An input file holds more than the most the suite reads for its kind (``errno.EFBIG``)."""

    def __init__(self, path: str, what: str, limit: int):
        super().__init__(errno.EFBIG, f"larger than {limit // MIB} MiB, the most read for a {what}")
        self.filename = path

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def _own_stream_descriptor(status: os.stat_result) -> int | None:
    """1 or 2 when ``status`` is this process's standard output or error, else None."""
    for descriptor in (1, 2):
        try:
            if os.path.samestat(status, os.fstat(descriptor)):
                return descriptor
        except OSError:
            continue
    return None


def _destination(path: str | os.PathLike[str]) -> tuple[str, str | int]:
    """How ``path`` is written: ("replace", real target), ("open", path) or ("descriptor", fd)."""
    text = os.fspath(path)
    if not text:
        raise OutputPathError("''", "the output path is empty")
    if text.endswith(os.sep):
        raise OutputPathError(text, "the path names a directory", errno.EISDIR)
    try:
        status = os.stat(text)
    except FileNotFoundError:
        # A new file, or a symbolic link to one that does not exist yet.
        target = os.path.realpath(text)
        folder = os.path.dirname(target)
        if not os.path.isdir(folder):
            raise OutputPathError(text, f"output folder does not exist ({os.path.dirname(text) or folder})", errno.ENOENT) from None
        return "replace", target
    except OSError as err:
        raise OutputPathError(text, err.strerror or str(err), err.errno) from None
    if stat.S_ISDIR(status.st_mode):
        raise OutputPathError(text, "it is a directory", errno.EISDIR)
    descriptor = _own_stream_descriptor(status)
    if descriptor is not None:
        return "descriptor", descriptor
    if stat.S_ISCHR(status.st_mode) or stat.S_ISFIFO(status.st_mode):
        return "open", text
    if stat.S_ISREG(status.st_mode):
        return "replace", os.path.realpath(text)
    raise OutputPathError(text, "it is neither a regular file, a character device nor a FIFO")


def check_output_path(path: str | os.PathLike[str]) -> None:
    """Raise OutputPathError unless ``path`` can be written by ``write_bytes_atomically``."""
    text = os.fspath(path)
    how, where = _destination(text)
    if how == "replace":
        assert isinstance(where, str)
        folder = os.path.dirname(where)
        if not os.access(folder, os.W_OK) or (os.path.exists(where) and not os.access(where, os.W_OK)):
            raise OutputPathError(text, "not writable (permission denied)", errno.EACCES)
    elif how == "open" and not os.access(text, os.W_OK):
        raise OutputPathError(text, "not writable (permission denied)", errno.EACCES)


def _replace(target: str, data: bytes | bytearray | memoryview) -> None:
    """Write ``target`` through a synced temporary file renamed over it; mode as ``open()`` gives."""
    folder, name = os.path.split(target)
    fd, temp_path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_path, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, target)
    except BaseException:
        Path(temp_path).unlink(missing_ok=True)
        raise


def _write_descriptor(descriptor: int, data: bytes | bytearray | memoryview) -> None:
    stream = sys.stdout if descriptor == 1 else sys.stderr
    if stream is not None:
        stream.flush()  # what the script printed before comes first
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(descriptor, view) :]


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` by the rules of this module: a regular file all at once or not at
    all (with the permissions a plain ``open()`` would give it), a device or FIFO directly."""
    text = os.fspath(path)
    how, where = _destination(text)
    try:
        if how == "replace":
            assert isinstance(where, str)
            _replace(where, data)
        elif how == "descriptor":
            assert isinstance(where, int)
            _write_descriptor(where, data)
        else:
            with open(text, "wb") as handle:
                handle.write(data)
    except OSError as err:
        raise OutputPathError(text, err.strerror or str(err), err.errno) from None


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """``write_bytes_atomically`` of ``text`` in UTF-8."""
    write_bytes_atomically(path, text.encode("utf-8"))


def write_json_and_markdown(out_dir: str | os.PathLike[str], stem: str, data: object, markdown: str) -> None:
    """A benchmark's record pair: ``stem.json`` (``data``) and ``stem.md`` (its table) in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomically(Path(out_dir) / f"{stem}.json", json.dumps(data, indent=1) + "\n")
    write_text_atomically(Path(out_dir) / f"{stem}.md", markdown)


def read_limited(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """The whole content of ``path`` (any kind of file), at most ``limit`` bytes of it.

    Raises InputTooLargeError (an OSError) when there is more, and the OSError of ``open()`` or
    ``read()`` otherwise; ``what`` names the kind of input in the message ("passage file").
    """
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise InputTooLargeError(os.fspath(path), what, limit)
    return data
