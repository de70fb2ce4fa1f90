"""Choose the TensorRT implementation the builders and runners talk to.

Every TensorRT-facing module does ``from helpers.backend import trt`` and writes plain
TensorRT Python API code against it.  ``select_backend`` binds that name either to the real
``tensorrt`` module or to the portable engine (``helpers.portable``), which implements the
same API subset on PyTorch.  Binding happens once, before any builder/runner code runs.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

BACKENDS = ("auto", "tensorrt", "portable")
ENV_BACKEND = "DEMOBERT_BACKEND"


class BackendError(RuntimeError):
    pass


class _BackendProxy:
    """Forwards attribute access to the selected backend module."""

    _module: ModuleType | None = None

    def __getattr__(self, name: str):
        module = self._module
        if module is None:
            module = select_backend(os.environ.get(ENV_BACKEND, "auto"))
        return getattr(module, name)


if TYPE_CHECKING:
    import tensorrt as trt
else:
    trt = _BackendProxy()


def import_tensorrt() -> ModuleType | None:
    try:
        module = importlib.import_module("tensorrt")
    except ImportError:
        return None
    # tensorrt-stubs installs a bare tensorrt/__init__.pyi folder, which imports as an empty namespace package.
    return module if hasattr(module, "Builder") else None


def select_backend(name: str = "auto") -> ModuleType:
    """Bind ``trt`` to the requested backend and return the module."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module: ModuleType | None
    if name == "portable":
        module = importlib.import_module("helpers.portable")
    else:
        module = import_tensorrt()
        if module is None:
            if name == "tensorrt":
                raise BackendError(
                    "TensorRT is not installed (import tensorrt failed); "
                    "use --backend portable, or run `python3 -m helpers.doctor` to see what is missing"
                )
            module = importlib.import_module("helpers.portable")
    _BackendProxy._module = module
    return module


def backend_name() -> str:
    """'tensorrt' or 'portable' for the bound backend (binding 'auto' first if needed)."""
    module = _BackendProxy._module or select_backend(os.environ.get(ENV_BACKEND, "auto"))
    return "portable" if module.__name__ == "helpers.portable" else "tensorrt"
