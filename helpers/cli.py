"""What every command-line entry point of the suite does at its edges.

* A problem the user can fix (:class:`RunnerError`) is one line on stderr and exit status 1
  (:func:`exit_on_error`); Ctrl-C is one line and exit status 130 (:func:`exit_on_interrupt`).
* Unknown options are named in a warning, not silently dropped (:func:`parse_known_options`).
* The user's files: inputs are read whole within a size limit (:func:`read_text_file`,
  :func:`squad_examples`), outputs are checked before any long work and written atomically
  (:func:`check_writable_output`, :func:`write_text_atomically`); each failure is a ``RunnerError``.

Outputs need nothing more on Ctrl-C: ``helpers.files`` removes its temporary file on any exception,
so an interrupted run leaves the previous output (or none), never half of one.

This module imports neither PyTorch nor TensorRT, so that scripts without an engine (the Triton
clients, the SQuAD evaluators) start without loading them.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from helpers import backend, files

# 128 + SIGINT, what shells report for a command stopped by Ctrl-C.
INTERRUPTED_STATUS = 130

Main = TypeVar("Main", bound=Callable[..., Any])


def script_name(main: Callable[..., Any]) -> str:
    """The file name of the script whose ``main`` this is (``inference.py``)."""
    module = sys.modules.get(main.__module__)
    return Path(getattr(module, "__file__", None) or sys.argv[0]).name


def exit_on_interrupt(main: Main) -> Main:
    """``main`` with Ctrl-C (KeyboardInterrupt) turned into ``<script>: interrupted`` on stderr and
    exit status 130, instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            # On a terminal the line starts after the echoed ^C (or a prompt, a progress bar).
            print(f"{chr(10) if sys.stderr.isatty() else ''}{script_name(main)}: interrupted", file=sys.stderr)
            raise SystemExit(INTERRUPTED_STATUS) from None

    return wrapper  # type: ignore[return-value]


class RunnerError(RuntimeError):
    """A problem the user can fix (bad file, missing library, impossible shape): printed as one line."""


def exit_on_error(main: Callable[..., int | None]) -> Callable[..., int | None]:
    """Run a script's main(); turn user-facing errors into one line on stderr and exit status 1,
    Ctrl-C into one line and status 130."""

    @exit_on_interrupt
    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int | None:
        try:
            return main(*args, **kwargs)
        except (RunnerError, backend.BackendError) as err:
            print(f"{script_name(main)}: error: {err}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper


def parse_known_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The rule of every builder, runner and benchmark script: as in the original demo, unknown
    options (and stray words) are ignored and unambiguous prefixes accepted, but what was ignored
    is named in a warning on stderr, so that a mistyped option is not silently lost."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"{parser.prog}: warning: ignoring unknown arguments: {' '.join(unknown)}", file=sys.stderr)
    return args


def check_writable_output(path: str | os.PathLike[str]) -> None:
    """Fail early (before any long run) when ``path`` cannot be written (``helpers.files`` rules)."""
    try:
        files.check_output_path(path)
    except files.OutputPathError as err:
        raise RunnerError(str(err)) from None


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """``helpers.files.write_text_atomically``, its failures as a ``RunnerError``."""
    try:
        files.write_text_atomically(path, text)
    except files.OutputPathError as err:
        raise RunnerError(str(err)) from None


def read_text_file(path: str, what: str) -> str:
    """Whole content of a UTF-8 text file of at most TEXT_FILE_MAX_BYTES, with one-line errors."""
    try:
        data = files.read_limited(path, files.TEXT_FILE_MAX_BYTES, f"{what} file")
        # Universal newlines, as a text-mode read gives them.
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()
    except FileNotFoundError:
        raise RunnerError(f"{what} file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise RunnerError(f"{what} file {path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise RunnerError(f"cannot read {what} file {path}: {err.strerror}") from None


def squad_examples(path: str) -> list[Any]:
    """The examples of a SQuAD file, after checking that it is one."""
    # Imported here: the SQuAD reader brings numpy, which the evaluators' start-up does without.
    import helpers.data_processing as dp

    try:
        return dp.read_squad_json(path)
    except dp.SquadFormatError as err:
        raise RunnerError(f"not a usable SQuAD file: {err}") from None
