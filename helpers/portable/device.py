"""The torch device portable engines load onto: ``DEMOBERT_DEVICE`` or CUDA when available."""

from __future__ import annotations

import os

import torch

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
