"""Loading weight pickles (Megatron ``--pickle`` files) without running code from them.

A plain ``pickle.load`` calls whatever function the file names, so a crafted file runs arbitrary
code.  :func:`load_weight_pickle` admits only what a weight pickle holds: dicts (also
``OrderedDict``), lists, tuples, sets, strings, bytes, numbers, booleans, None, numpy arrays,
scalars and dtypes, and torch tensors.  Tensor storages pickled by torch are read back with
``torch.load(..., weights_only=True)``, torch's own restricted loader.  Any other global is
refused with a :class:`WeightPickleError` that names it.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from collections import OrderedDict
from typing import IO, Any

import numpy as np


class WeightPickleError(pickle.UnpicklingError):
    """Not a weight pickle: it names a global that weight pickles never hold (the message names
    it), or it is truncated or malformed."""


def _torch_storage_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` through torch's restricted (weights-only) loader."""
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes; no other codec is admitted."""
    if encoding not in ("latin1", "latin-1"):
        raise WeightPickleError(f"the pickle encodes bytes with codec {encoding!r}; weight pickles use latin1")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    # numpy 2 pickles name numpy._core, numpy 1 pickles numpy.core; both mean the same functions.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


def _torch_globals() -> dict[tuple[str, str], Any]:
    import torch
    import torch._utils

    allowed: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _torch_storage_from_bytes,
    }
    for name in dir(torch):
        if isinstance(getattr(torch, name), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
    return allowed


_BUILTINS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
    **{("builtins", kind.__name__): kind for kind in (set, frozenset, bytearray, complex)},
}


class _WeightUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles may use Python 2 names (__builtin__), as pickle itself maps them.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = (module, name)
        if key in _BUILTINS:
            return _BUILTINS[key]
        if module.split(".")[0] == "numpy":
            found = _numpy_globals().get(key)
        elif module.split(".")[0] == "torch":
            found = _torch_globals().get(key)
        else:
            found = None
        if found is None:
            raise WeightPickleError(
                f"refusing global {module}.{name}: a weight pickle holds only dicts, lists, strings, numbers, "
                "numpy arrays and torch tensors (loading it could run code)"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise WeightPickleError("refusing a persistent id: a weight pickle has none (is it a torch.save archive?)")


def load_weight_pickle(source: str | os.PathLike[str] | IO[bytes]) -> Any:
    """The object a weight pickle (a path or a binary file) holds; raises WeightPickleError for
    anything but plain data, numpy arrays and torch tensors, or a malformed pickle, and OSError
    when the file cannot be read."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            return load_weight_pickle(handle)
    try:
        return _WeightUnpickler(source).load()
    except (WeightPickleError, OSError):
        raise
    except Exception as err:  # truncated or malformed pickles fail in many ways
        reason = next((line for line in str(err).splitlines() if line.strip()), "")
        raise WeightPickleError(f"not a readable weight pickle ({type(err).__name__}{': ' + reason if reason else ''})") from None
