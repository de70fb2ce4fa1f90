"""Atomic file writes: every file the suite leaves for a user (engines, caches, predictions,
benchmark tables) is written to a temporary file next to its destination, synced, then renamed
over it, so a reader never sees half a file and a failure leaves the old file (or none)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` all at once or not at all; the file gets the permissions a plain
    ``open()`` would give it (``mkstemp`` makes 0600 files)."""
    target = Path(path)
    fd, temp_path = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
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


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """``write_bytes_atomically`` of ``text`` in UTF-8."""
    write_bytes_atomically(path, text.encode("utf-8"))


def write_json_and_markdown(out_dir: str | os.PathLike[str], stem: str, data: object, markdown: str) -> None:
    """A benchmark's record pair: ``stem.json`` (``data``) and ``stem.md`` (its table) in ``out_dir``."""
    import json

    os.makedirs(out_dir, exist_ok=True)
    write_text_atomically(Path(out_dir) / f"{stem}.json", json.dumps(data, indent=1) + "\n")
    write_text_atomically(Path(out_dir) / f"{stem}.md", markdown)
