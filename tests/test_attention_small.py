"""The batch-1 Triton attention (helpers.portable.kernels.attention_small) against the reference
math (helpers.portable.ops.attention_fixed) and plain torch softmax attention.

Awkward sequence lengths, 12 and 16 heads of 64 or 32, with and without the key bias, PDL on and
off, inside a CUDA graph.  GPU only: skipped on machines without CUDA (Triton kernels).
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers.portable import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton attention needs a CUDA GPU")

TOLERANCE = {"atol": 1e-2, "rtol": 1e-2}
# (S, B, heads, head size)
SHAPES = [(1, 1, 16, 64), (37, 2, 12, 64), (128, 1, 16, 64), (200, 3, 12, 32), (384, 1, 16, 64), (512, 2, 12, 64)]


@pytest.fixture(autouse=True)
def fresh_seed(request):
    torch.manual_seed(hash(request.node.name) % 2**31)


def packed_qkv(seq: int, batch: int, heads: int, head_size: int, dtype=torch.float16) -> torch.Tensor:
    return torch.randn(seq, batch, 3 * heads * head_size, device="cuda").to(dtype)


def valid_lengths(seq: int, batch: int, mask: str) -> torch.Tensor | None:
    """None, every key valid, or padded: the first sequence keeps one key, the others random counts."""
    if mask == "none":
        return None
    lengths = torch.full((batch,), seq, dtype=torch.int32, device="cuda")
    if mask == "padded":
        lengths = torch.randint(1, seq + 1, (batch,), dtype=torch.int32, device="cuda")
        lengths[0] = 1
    return lengths


def key_bias(lengths: torch.Tensor | None, seq: int, dtype=torch.float16) -> torch.Tensor | None:
    from helpers.portable.kernels.attention import key_padding_bias

    return None if lengths is None else key_padding_bias(lengths, seq, dtype)


def softmax_attention(qkv: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain float32 softmax(q·kᵀ/√H + bias)·v per head, for biases of any values."""
    seq, batch, width = qkv.shape
    head_size = width // (3 * heads)
    q, k, v = qkv.float().view(seq, batch, heads, 3, head_size).permute(3, 1, 2, 0, 4)  # [B, N, S, H] each
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_size) + bias.float(), dim=-1)
    return (probs @ v).permute(2, 0, 1, 3).reshape(seq, batch, heads * head_size).to(qkv.dtype)


@pytest.mark.parametrize("seq,batch,heads,head_size", SHAPES)
@pytest.mark.parametrize("mask", ["none", "full", "padded"])
def test_matches_reference(seq, batch, heads, head_size, mask):
    from helpers.portable.kernels.attention_small import attention_small

    qkv = packed_qkv(seq, batch, heads, head_size)
    lengths = valid_lengths(seq, batch, mask)
    expected = ops.attention_fixed(qkv, lengths, heads)
    got = attention_small(qkv, key_bias(lengths, seq), heads)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, **TOLERANCE)


@pytest.mark.parametrize("use_pdl", [False, True])
def test_pdl_on_and_off_match_reference(use_pdl):
    from helpers.portable.kernels.attention_small import attention_small

    qkv = packed_qkv(128, 2, 16, 64)
    lengths = valid_lengths(128, 2, "padded")
    got = attention_small(qkv, key_bias(lengths, 128), 16, use_pdl=use_pdl)
    torch.testing.assert_close(got, ops.attention_fixed(qkv, lengths, 16), **TOLERANCE)


@pytest.mark.parametrize("seq,block_m,block_n,stages", [(200, 16, 32, 1), (384, 64, 128, 2), (77, 32, 16, 1)])
def test_tiles_smaller_than_the_sequence(seq, block_m, block_n, stages):
    """Several key tiles per program (the online softmax's rescaling) and partial query blocks."""
    from helpers.portable.kernels.attention_small import Tiles, attention_small

    qkv = packed_qkv(seq, 2, 12, 64)
    lengths = valid_lengths(seq, 2, "padded")
    got = attention_small(qkv, key_bias(lengths, seq), 12, tiles=Tiles(block_m, block_n, 4, stages))
    torch.testing.assert_close(got, ops.attention_fixed(qkv, lengths, 12), **TOLERANCE)


@pytest.mark.parametrize("bias_batch", [3, 1])
def test_additive_bias_of_any_values(bias_batch):
    from helpers.portable.kernels.attention_small import attention_small

    seq, batch, heads = 100, 3, 12
    qkv = packed_qkv(seq, batch, heads, 64)
    bias = (4 * torch.randn(bias_batch, 1, 1, seq, device="cuda")).half()
    bias[..., seq // 2:: 7] = float("-inf")
    got = attention_small(qkv, bias, heads)
    torch.testing.assert_close(got, softmax_attention(qkv, bias, heads), **TOLERANCE)


def test_reads_batch_major_qkv_and_bf16():
    from helpers.portable.kernels.attention_small import attention_small

    seq, batch, heads = 130, 3, 16
    qkv = torch.randn(batch, seq, 3 * heads * 64, device="cuda").bfloat16().transpose(0, 1)
    lengths = valid_lengths(seq, batch, "padded")
    got = attention_small(qkv, key_bias(lengths, seq, torch.bfloat16), heads)
    torch.testing.assert_close(got, ops.attention_fixed(qkv, lengths, heads), atol=2e-2, rtol=2e-2)


def test_sequence_without_valid_keys_gives_zeros():
    from helpers.portable.kernels.attention_small import attention_small

    qkv = packed_qkv(64, 2, 12, 64)
    lengths = torch.tensor([0, 40], dtype=torch.int32, device="cuda")
    got = attention_small(qkv, key_bias(lengths, 64), 12)
    assert got[:, 0].abs().max() == 0
    torch.testing.assert_close(got, ops.attention_fixed(qkv, lengths, 12), **TOLERANCE)


@pytest.mark.parametrize("use_pdl", [False, True])
def test_chained_in_a_cuda_graph(use_pdl):
    """Two launches in one graph, the second reading the first's output as its packed QKV (768 =
    3 × 4 heads × 64): with PDL the second must wait for the first before reading."""
    from helpers.portable.kernels.attention_small import attention_small

    seq, batch = 128, 1
    qkv = packed_qkv(seq, batch, 12, 64)
    bias = key_bias(valid_lengths(seq, batch, "full"), seq)

    def chain() -> torch.Tensor:
        return attention_small(attention_small(qkv, bias, 12, use_pdl=use_pdl), None, 4, use_pdl=use_pdl)

    chain()  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain()
    for lengths in (valid_lengths(seq, batch, "full"), valid_lengths(seq, batch, "padded")):
        qkv.copy_(packed_qkv(seq, batch, 12, 64))
        bias.copy_(key_bias(lengths, seq))
        graph.replay()
        expected = ops.attention_fixed(ops.attention_fixed(qkv, lengths, 12), None, 4)
        torch.testing.assert_close(out, expected, **TOLERANCE)


@pytest.mark.parametrize("batch", [1, 64])
def test_routing_keeps_the_contract_on_both_sides(batch):
    from helpers.portable.kernels.attention import attention_fixed_biased

    qkv = packed_qkv(128, batch, 16, 64)
    lengths = valid_lengths(128, batch, "padded")
    got = attention_fixed_biased(qkv, key_bias(lengths, 128), 16)
    torch.testing.assert_close(got, ops.attention_fixed(qkv, lengths, 16), **TOLERANCE)
