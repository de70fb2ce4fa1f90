"""serving.packed_layout against a transposed copy per sequence."""

import pytest
import torch

from serving.packed_layout import sequence_major


def per_sequence_reference(logits: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    blocks, start = [], 0
    for length in lengths:
        blocks.append(logits[:, start:start + length].contiguous().reshape(-1))
        start += length
    return torch.cat(blocks)


@pytest.mark.parametrize("lengths", [[1], [7], [1, 1, 1], [3, 1, 384, 17, 2], [129] * 5 + [1, 64]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_each_sequence_block_is_its_start_then_end_logits(lengths, dtype):
    generator = torch.Generator().manual_seed(sum(lengths))
    logits = torch.randn(2, sum(lengths), generator=generator).to(dtype)
    blocks = sequence_major(logits, lengths)
    assert blocks.dtype == dtype
    assert torch.equal(blocks, per_sequence_reference(logits, lengths))


def test_a_request_of_several_sequences_reads_as_batch_class_token():
    # Two requests: 3 sequences of 5 tokens, then 1 of 4; the first request's block viewed [3, 2, 5].
    logits = torch.arange(2 * 19, dtype=torch.float32).reshape(2, 19)
    blocks = sequence_major(logits, [5, 5, 5, 4])
    first = blocks[: 2 * 15].view(3, 2, 5)
    assert torch.equal(first, logits[:, :15].reshape(2, 3, 5).permute(1, 0, 2))
    assert torch.equal(blocks[30:].view(2, 4), logits[:, 15:])


def test_logits_that_do_not_match_the_lengths_are_refused():
    with pytest.raises(ValueError, match=r"expected logits of shape \(2, 5\)"):
        sequence_major(torch.zeros(2, 6), [2, 3])
