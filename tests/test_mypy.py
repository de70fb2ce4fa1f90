"""mypy over the TensorRT-facing code, checked against the PyPI package tensorrt-stubs.

``helpers.backend`` binds ``trt`` to the real ``tensorrt`` module under TYPE_CHECKING, so this
checks the builders against TensorRT's actual Python API even where TensorRT is not installed.
The stubs ship as a bare ``tensorrt`` folder (no py.typed, so mypy ignores it in site-packages)
and, being generated from the pybind11 module, contain a few syntax errors (parameters named
``in``, a required parameter after defaulted ones) and omit the bindings' implicit conversions
(str → FallbackString, tuple/list → Dims and Permutation).  ``repaired_tensorrt_stubs`` copies
them to a folder for MYPYPATH with exactly those lines fixed; mypy.ini silences the remaining
errors inside the stubs themselves.
"""

from __future__ import annotations

import keyword
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")
# Types the bindings convert to implicitly, and what they accept.
IMPLICIT_CONVERSIONS = {
    "FallbackString": "str | FallbackString",
    "Dims": "Dims | tuple[int, ...] | list[int]",
    "Permutation": "Permutation | tuple[int, ...] | list[int]",
}


def _widen(annotation: str) -> str:
    return IMPLICIT_CONVERSIONS.get(annotation.strip(), annotation.strip())


def _split_parameters(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def repair_stub_line(line: str) -> str:
    """Rename keyword-named parameters (``in`` → ``in_``), default required-after-default ones,
    and widen parameter/attribute annotations by the bindings' implicit conversions."""
    attribute = re.match(r"^(\s+\w+): (\w+)$", line)
    if attribute is not None:
        return f"{attribute.group(1)}: {_widen(attribute.group(2))}"
    match = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if match is None:
        return line
    fixed, after_default = [], False
    for parameter in (p.strip() for p in _split_parameters(match.group(2))):
        param = re.match(r"^(\w+)(?:: ([^=]+?))?( = .*)?$", parameter)
        if param is not None:
            name, annotation, default = param.group(1), param.group(2), param.group(3) or ""
            if keyword.iskeyword(name):
                name += "_"
            parameter = name + (f": {_widen(annotation)}" if annotation else "") + default
        if parameter.startswith("*"):
            after_default = False
        elif "=" in parameter:
            after_default = True
        elif after_default:
            parameter += " = ..."
        fixed.append(parameter)
    return match.group(1) + ", ".join(fixed) + match.group(3)


def repaired_tensorrt_stubs(destination: Path) -> Path:
    site_packages = Path(sysconfig.get_paths()["purelib"])
    for package in STUB_PACKAGES:
        source = site_packages / package
        if not any(source.glob("*.pyi")):
            pytest.skip(f"tensorrt-stubs is not installed ({source} has no .pyi files)")
        for stub in source.glob("*.pyi"):
            target = destination / package / stub.name
            target.parent.mkdir(parents=True, exist_ok=True)
            lines = stub.read_text(encoding="utf-8").splitlines()
            target.write_text("\n".join(repair_stub_line(line) for line in lines) + "\n", encoding="utf-8")
    return destination


def test_repair_stub_line():
    assert (
        repair_stub_line("    def f(self, in: list[int], out: int) -> int:")
        == "    def f(self, in_: list[int], out: int) -> int:"
    )
    assert (
        repair_stub_line("    def g(self, a: int = None, b: int) -> None:")
        == "    def g(self, a: int = None, b: int = ...) -> None:"
    )
    assert repair_stub_line("    def h(self, a: dict[str, int], *args, b: int) -> None:") == (
        "    def h(self, a: dict[str, int], *args, b: int) -> None:"
    )
    assert repair_stub_line("    def add_input(self, name: str, shape: Dims) -> Dims:") == (
        "    def add_input(self, name: str, shape: Dims | tuple[int, ...] | list[int]) -> Dims:"
    )
    assert repair_stub_line("    second_transpose: Permutation") == (
        "    second_transpose: Permutation | tuple[int, ...] | list[int]"
    )


def test_tensorrt_facing_code_type_checks(tmp_path):
    stubs = repaired_tensorrt_stubs(tmp_path / "stubs")
    env = dict(os.environ, MYPYPATH=str(stubs))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout
