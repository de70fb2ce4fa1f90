"""serving.packed_layout against a transposed copy per sequence."""

import numpy as np
import pytest

from serving.packed_layout import sequence_major


def per_sequence_reference(logits: np.ndarray, lengths: list[int]) -> np.ndarray:
    blocks, start = [], 0
    for length in lengths:
        blocks.append(logits[:, start:start + length].reshape(-1))
        start += length
    return np.concatenate(blocks)


@pytest.mark.parametrize("lengths", [[1], [7], [1, 1, 1], [3, 1, 384, 17, 2], [129] * 5 + [1, 64]])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_each_sequence_block_is_its_start_then_end_logits(lengths, dtype):
    logits = np.random.default_rng(sum(lengths)).standard_normal((2, sum(lengths))).astype(dtype)
    blocks = sequence_major(logits, lengths)
    assert blocks.dtype == dtype
    np.testing.assert_array_equal(blocks, per_sequence_reference(logits, lengths))


def test_a_request_of_several_sequences_reads_as_batch_class_token():
    # Two requests: 3 sequences of 5 tokens, then 1 of 4; the first request's block viewed [3, 2, 5].
    logits = np.arange(2 * 19, dtype=np.float32).reshape(2, 19)
    blocks = sequence_major(logits, [5, 5, 5, 4])
    first = blocks[: 2 * 15].reshape(3, 2, 5)
    np.testing.assert_array_equal(first, logits[:, :15].reshape(2, 3, 5).transpose(1, 0, 2))
    np.testing.assert_array_equal(blocks[30:].reshape(2, 4), logits[:, 15:])


def test_logits_that_do_not_match_the_lengths_are_refused():
    with pytest.raises(ValueError, match=r"expected logits of shape \(2, 5\)"):
        sequence_major(np.zeros((2, 6)), [2, 3])
