"""Per-sequence blocks of a packed engine's class-first logits, for answering each request."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sequence_major(logits: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """The packed logits ``[2, T]`` of sequences of ``lengths`` (T their sum), reordered into one
    flat tensor in which each sequence's ``[2, L]`` block (start logits, then end logits) lies
    contiguously, in sequence order: the sequence that starts at token ``t`` occupies
    ``[2t, 2t + 2L)``.  One scatter for the whole batch instead of a transposed copy per request.
    """
    counts = torch.tensor(lengths, dtype=torch.int64)
    total = int(counts.sum())
    if logits.shape != (2, total):
        raise ValueError(f"expected logits of shape (2, {total}), got {tuple(logits.shape)}")
    starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    start_index = starts + torch.arange(total)
    blocks = torch.empty(2 * total, dtype=logits.dtype)
    blocks[start_index] = logits[0]
    blocks[start_index + torch.repeat_interleave(counts, counts)] = logits[1]
    return blocks
