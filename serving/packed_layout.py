"""Per-sequence blocks of a packed engine's class-first logits, for answering each request."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sequence_major(logits: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """The packed logits ``[2, T]`` of sequences of ``lengths`` (T their sum), reordered into one
    flat array in which each sequence's ``[2, L]`` block (start logits, then end logits) lies
    contiguously, in sequence order: the sequence that starts at token ``t`` occupies
    ``[2t, 2t + 2L)``.  One scatter for the whole batch instead of a transposed copy per request.
    """
    counts = np.asarray(lengths, dtype=np.int64)
    total = int(counts.sum())
    if logits.shape != (2, total):
        raise ValueError(f"expected logits of shape (2, {total}), got {tuple(logits.shape)}")
    start_index = np.repeat(np.cumsum(counts) - counts, counts) + np.arange(total)
    blocks = np.empty(2 * total, dtype=logits.dtype)
    blocks[start_index] = logits[0]
    blocks[start_index + np.repeat(counts, counts)] = logits[1]
    return blocks
