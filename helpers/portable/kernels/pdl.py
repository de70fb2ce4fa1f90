"""Programmatic dependent launch (PDL) for the fast path's Triton kernels.

At batch 1 every kernel of a layer is short (3–9 µs) and most of its time is the launch, the wait
for the first bytes from HBM and the tail; PDL lets a kernel start while the one before it in the
stream is still finishing.  The contract every PDL kernel keeps (Hopper's ``griddepcontrol``):

* it takes ``USE_PDL`` as a constexpr and is launched with ``**pdl_launch(device, rows)`` (that
  constexpr and Triton's ``launch_pdl`` together, for the batch-1 chain only);
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
CUDA graph capture keeps the programmatic edges.  An engine built with ``EngineOptions(pdl=False)``
(``DEMOBERT_PDL=0``) launches everything plainly.
"""

from __future__ import annotations

import functools

import torch

# Token rows up to which the fast path runs the batch-1 chain: the GEMMs are ``few_rows_gemm``
# (``steps.Gemm``) and every Triton kernel launches under PDL.  Above, the GEMMs are cuBLASLt's,
# and PDL in the kernels between them measured slower (H100, BERT-large 384 × 1: 1.110 against
# 1.086 ms; 128 × 1 with cuBLASLt GEMMs: 0.860 against 0.843), so those launch plainly.
CHAIN_MAX_ROWS = 128


@functools.cache
def _capable(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def pdl_supported(device: torch.device) -> bool:
    """Whether Triton kernels on ``device`` can launch with PDL (CUDA, sm90 or newer)."""
    if device.type != "cuda":
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


def pdl_launch(device: torch.device, rows: int, allowed: bool = True) -> dict[str, bool]:
    """The launch keywords of a PDL kernel on ``device`` over ``rows`` token rows: its ``USE_PDL``
    constexpr and Triton's ``launch_pdl`` option, on together inside the batch-1 chain
    (``rows`` ≤ CHAIN_MAX_ROWS) where ``allowed``, else off together."""
    enabled = allowed and rows <= CHAIN_MAX_ROWS and pdl_supported(device)
    return {"USE_PDL": enabled, "launch_pdl": enabled}
