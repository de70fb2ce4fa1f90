"""The errors every weight and configuration reader raises: one line, naming the file and the problem."""

from __future__ import annotations


class WeightLoadError(ValueError):
    """A weight file is missing, unreadable, or holds tensors the builders cannot use."""


class ConfigError(ValueError):
    """The model configuration is missing, unreadable or unsupported."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (library errors are often multi-line)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
