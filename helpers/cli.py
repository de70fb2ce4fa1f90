"""What every command-line entry point of the suite does with Ctrl-C: one line, exit status 130.

Outputs need nothing more: ``helpers.files`` removes its temporary file on any exception, so an
interrupted run leaves the previous output (or none), never half of one.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
