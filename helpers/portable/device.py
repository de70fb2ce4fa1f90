"""The torch device portable engines load onto (``DEMOBERT_DEVICE`` or CUDA when available), and
tensors over the raw device addresses the TensorRT API passes around."""

from __future__ import annotations

import ctypes
import os

import numpy as np
import torch

from helpers.portable.enums import DataType, nptype
from helpers.portable.layers import TORCH_DTYPE, Shape, volume

ENV_DEVICE = "DEMOBERT_DEVICE"

_selected: torch.device | None = None


def _parse(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested, but CUDA is not available to PyTorch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested, but only {torch.cuda.device_count()} CUDA device(s) exist")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def set_device(name: str | torch.device | None) -> torch.device:
    """Select the device for engines deserialized from now on (None: back to the default rule)."""
    global _selected
    _selected = None if name is None else _parse(str(name))
    return get_device()


def get_device() -> torch.device:
    if _selected is not None:
        return _selected
    env = os.environ.get(ENV_DEVICE, "").strip()
    if env:
        return _parse(env)
    return _parse("cuda") if torch.cuda.is_available() else torch.device("cpu")


def total_memory() -> int:
    """Bytes of memory on the current device (the default WORKSPACE pool limit)."""
    device = get_device()
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class _CudaArray:
    """Describes raw device memory to torch through ``__cuda_array_interface__``."""

    def __init__(self, ptr: int, shape: Shape, dtype: np.dtype) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": dtype.str, "data": (ptr, False), "version": 2}


def wrap_pointer(ptr: int, shape: Shape, dtype: DataType, dev: torch.device) -> torch.Tensor:
    """A tensor viewing ``volume(shape)`` elements of ``dtype`` at address ``ptr`` (no copy)."""
    np_dtype = np.dtype(nptype(dtype))
    if volume(shape) == 0:
        return torch.empty(shape, dtype=TORCH_DTYPE[dtype], device=dev)
    if dev.type == "cuda":
        # No device argument: torch then asks CUDA where the pointer lives (and refuses host memory).
        # A kernel reading a host address would raise an illegal-address fault instead, and that
        # poisons the CUDA context of the whole process.
        try:
            tensor = torch.as_tensor(_CudaArray(ptr, shape, np_dtype))
        except RuntimeError:
            tensor = None
        if tensor is None or tensor.device != dev:
            raise RuntimeError(f"address {ptr:#x} is not memory of {dev}, where this engine runs")
        return tensor
    raw = (ctypes.c_char * (volume(shape) * np_dtype.itemsize)).from_address(ptr)
    return torch.from_numpy(np.frombuffer(memoryview(raw), dtype=np_dtype).reshape(shape))
