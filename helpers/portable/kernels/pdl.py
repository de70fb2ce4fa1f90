"""Programmatic dependent launch (PDL) for the fast path's Triton kernels.

At batch 1 every kernel of a layer is short (3–9 µs) and most of its time is the launch, the wait
for the first bytes from HBM and the tail; PDL lets a kernel start while the one before it in the
stream is still finishing.  The contract every PDL kernel keeps (Hopper's ``griddepcontrol``):

* it takes ``USE_PDL`` as a constexpr and is launched with ``**pdl_launch(device)`` (that
  constexpr and Triton's ``launch_pdl`` together);
* before ``gdc_wait()`` it may only read what no earlier kernel of the run writes (the engine's
  weights): no reads of activations and no global writes at all, since the earlier kernel may still
  be reading memory the caching allocator handed to this one;
* it calls ``gdc_launch_dependents()`` once it no longer needs the SMs to itself, so that the next
  kernel's programs can be scheduled (the fast path's kernels call it first thing: a program
  waiting in ``gdc_wait`` costs only its slot on an SM);
* every program calls ``gdc_wait()`` (unconditionally), so that a kernel's end implies its
  predecessor's: a chain of early launches stays ordered.

``gdc_wait`` waits for the whole earlier grid to finish and flush, so the order of results is that
of the stream; a kernel launched without PDL (cuBLAS, cuDNN, PyTorch) ends the overlap there.
CUDA graph capture keeps the programmatic edges.  ``DEMOBERT_PDL=0`` launches everything plainly.
"""

from __future__ import annotations

import functools
import os

import torch

PDL_ENV = "DEMOBERT_PDL"


@functools.cache
def _capable(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def pdl_enabled(device: torch.device) -> bool:
    """Whether Triton kernels on ``device`` launch with PDL (CUDA, sm90 or newer, not switched off)."""
    if device.type != "cuda" or os.environ.get(PDL_ENV, "1") == "0":
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


def pdl_launch(device: torch.device) -> dict[str, bool]:
    """The launch keywords of a PDL kernel on ``device``: its ``USE_PDL`` constexpr and Triton's
    ``launch_pdl`` option, on or off together."""
    enabled = pdl_enabled(device)
    return {"USE_PDL": enabled, "launch_pdl": enabled}
