"""The batch-1 GEMM (helpers/portable/kernels/few_rows_gemm.py) and the PDL chain of the fast path.

Against float32 PyTorch math (``helpers.portable.ops`` for the tanh GELU and LayerNorm, PyTorch's
exact GELU for the erf form): awkward sizes (rows, N and K off every tile), every epilogue,
split-K partial products summed by the skip-LayerNorm, operands read through TMA or pointers, with
programmatic dependent launch on and off, eager and replayed in a CUDA graph; and a built tiny
engine's fast plan at batch 1 (which takes this GEMM) against its reference plan.
GPU only (skipped on machines without CUDA), but for the PDL switch's rule.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers.portable import ops
from helpers.portable.kernels import pdl
from helpers.portable.options import PDL_ENV, EngineOptions

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="the few-rows GEMM needs a CUDA GPU")

# (M, N, K): rows off every tile size, N and K primes / not multiples of the tiles.
SHAPES = [(1, 97, 200), (37, 64, 64), (130, 200, 96), (385, 1024, 1000)]
EPILOGUES = ["none", "bias16", "bias32", "gelu", "gelu_erf"]  # gelu: float16 bias + tanh GELU; gelu_erf: + erf GELU


@pytest.fixture(scope="module")
def few_rows_gemm():
    from helpers.portable.kernels import few_rows_gemm as module

    return module


@pytest.fixture(params=[False, True], ids=["pdl_off", "pdl_on"])
def pdl_setting(request):
    return request.param


def operands(m: int, n: int, k: int, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    rows = torch.randn(m, k, device="cuda", generator=gen).half()
    weight = (torch.randn(n, k, device="cuda", generator=gen) / math.sqrt(k)).half()
    return rows, weight


def reference(rows, weight, bias=None, gelu=False, form="tanh") -> torch.Tensor:
    y = rows.float() @ weight.float().t()
    if bias is not None:
        y = y + bias.float()
    if not gelu:
        return y
    return ops.gelu_tanh(y) if form == "tanh" else F.gelu(y)


@pytest.fixture(params=[False, True], ids=["pointers", "tma"])
def tma(request):
    return request.param


@CUDA
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_linear_matches_float32_math(few_rows_gemm, pdl_setting, tma, m, n, k, epilogue):
    rows, weight = operands(m, n, k)
    bias = None if epilogue == "none" else torch.randn(n, device="cuda").to(
        torch.float32 if epilogue == "bias32" else torch.float16)
    gelu, form = epilogue.startswith("gelu"), "erf" if epilogue == "gelu_erf" else "tanh"
    got = few_rows_gemm.linear(rows, weight, bias, gelu=gelu, config=few_rows_gemm.Config(64, 64, 64, 1, 4, 3, tma),
                               pdl=pdl_setting, form=form)
    assert got.dtype == torch.float16 and got.shape == (m, n) and got.is_contiguous()
    # The erf GELU's check allows the FP16 rounding of the result only: where the forms differ most
    # (y ≈ -2.7, GELU ≈ -0.01) they are some 60 FP16 steps apart, so it also tells the two forms apart.
    tolerance = {"atol": 1e-4, "rtol": 2e-3} if form == "erf" else {"atol": 1e-2, "rtol": 1e-2}
    torch.testing.assert_close(got.float(), reference(rows, weight, bias, gelu, form), **tolerance)


@CUDA
@pytest.mark.parametrize("offset,width", [(8, 200), (3, 203)])
def test_linear_reads_rows_with_a_row_stride(few_rows_gemm, tma, offset, width):
    """Rows inside a wider tensor: TMA-aligned (16-byte base and stride), or not, which a TMA
    configuration then reads with pointers."""
    rows, weight = operands(50, 96, 160)
    wide = torch.zeros(50, width, dtype=torch.float16, device="cuda")
    wide[:, offset:offset + 160] = rows
    view = wide[:, offset:offset + 160]
    assert few_rows_gemm._tma_ready(view) == (offset == 8)
    got = few_rows_gemm.linear(view, weight, config=few_rows_gemm.Config(64, 32, 64, 1, 4, 3, tma))
    torch.testing.assert_close(got.float(), reference(rows, weight), atol=1e-2, rtol=1e-2)


@CUDA
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("split_k,block_k", [(1, 128), (3, 64), (4, 128), (8, 32)])
def test_partial_products_sum_to_the_product(few_rows_gemm, pdl_setting, tma, m, n, k, split_k, block_k):
    rows, weight = operands(m, n, k, seed=1)
    config = few_rows_gemm.Config(64, 32, block_k, split_k, 4, 3, tma)
    partials = few_rows_gemm.partial_products(rows, weight, config, pdl=pdl_setting)
    assert partials.dtype == torch.float32 and partials.shape[1:] == (m, n)
    # K cut into slices of whole blocks, as even as the blocks allow, at most split_k of them.
    blocks = -(-k // block_k)
    blocks_per_slice = -(-blocks // split_k)
    assert partials.shape[0] == -(-blocks // blocks_per_slice)
    torch.testing.assert_close(partials.sum(0), reference(rows, weight), atol=2e-3, rtol=2e-3)


@CUDA
@pytest.mark.parametrize("m,hidden,k", [(37, 96, 200), (128, 1024, 1024)])
def test_skip_layernorm_sums_the_partials(few_rows_gemm, pdl_setting, m, hidden, k):
    from helpers.portable.kernels.norms import skip_layernorm_into

    rows, weight = operands(m, hidden, k, seed=2)
    skip = torch.randn(m, hidden, device="cuda").half()
    gamma, beta, bias = torch.rand(hidden, device="cuda") + 0.5, torch.randn(hidden, device="cuda"), \
        torch.randn(hidden, device="cuda")
    partials = few_rows_gemm.partial_products(rows, weight, few_rows_gemm.Config(64, 64, 64, 4, 4, 3), pdl=pdl_setting)
    assert partials.shape[0] > 1
    out = torch.empty_like(skip)
    skip_layernorm_into(out, None, partials, skip, gamma, beta, bias, 1e-5, partials.shape[0], pdl=pdl_setting)
    expected = ops.layernorm(reference(rows, weight) + skip.float() + bias, gamma, beta, 1e-5)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


@CUDA
def test_a_pdl_chain_replayed_in_a_cuda_graph(few_rows_gemm, pdl_setting):
    """A layer's worth of kernels, each reading the previous one's result, captured once and replayed
    on new inputs: under PDL each program's wait must still see its predecessor's writes."""
    from helpers.portable.kernels.norms import skip_layernorm_into

    m, hidden, inter = 100, 256, 1024  # inside the PDL chain's rows, off the tiles
    gen = torch.Generator(device="cuda").manual_seed(3)
    w_in, w_up, w_down = ((torch.randn(o, i, device="cuda", generator=gen) / math.sqrt(i)).half()
                          for o, i in ((hidden, hidden), (inter, hidden), (hidden, inter)))
    b_up = torch.randn(inter, device="cuda", generator=gen).half()
    gamma, beta = torch.rand(hidden, device="cuda", generator=gen) + 0.5, torch.randn(hidden, device="cuda", generator=gen)
    x = torch.empty(m, hidden, device="cuda").half()

    def layer() -> torch.Tensor:
        partials = few_rows_gemm.partial_products(x, w_in, few_rows_gemm.Config(64, 64, 64, 2, 4, 3, True),
                                                  pdl=pdl_setting)
        h = torch.empty_like(x)
        skip_layernorm_into(h, None, partials, x, gamma, beta, None, 1e-5, partials.shape[0], pdl=pdl_setting)
        up = few_rows_gemm.linear(h, w_up, b_up, gelu=True, pdl=pdl_setting)
        partials = few_rows_gemm.partial_products(up, w_down, few_rows_gemm.Config(64, 32, 128, 4, 4, 3),
                                                  pdl=pdl_setting)
        out = torch.empty_like(x)
        skip_layernorm_into(out, None, partials, h, gamma, beta, None, 1e-5, partials.shape[0], pdl=pdl_setting)
        return out

    def expected(inputs: torch.Tensor) -> torch.Tensor:
        h = ops.layernorm(reference(inputs, w_in) + inputs.float(), gamma, beta, 1e-5).half()
        up = reference(h, w_up, b_up, gelu=True).half()
        return ops.layernorm(reference(up, w_down) + h.float(), gamma, beta, 1e-5)

    x.copy_(torch.randn(m, hidden, device="cuda"))
    layer()  # compiles outside of the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer()
    for seed in (4, 5):
        x.copy_(torch.randn(m, hidden, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed)))
        graph.replay()
        torch.testing.assert_close(out.float(), expected(x), atol=3e-2, rtol=3e-2)


def test_pdl_is_on_for_the_batch_1_chain_only(monkeypatch):
    monkeypatch.setattr(pdl, "_capable", lambda index: True)  # an sm_90 device, on any machine
    cuda = torch.device("cuda", 0)
    on, off = {"USE_PDL": True, "launch_pdl": True}, {"USE_PDL": False, "launch_pdl": False}
    assert pdl.pdl_launch(cuda, 1) == pdl.pdl_launch(cuda, pdl.CHAIN_MAX_ROWS) == on
    assert pdl.pdl_launch(cuda, pdl.CHAIN_MAX_ROWS + 1) == off
    assert pdl.pdl_launch(torch.device("cpu"), 1) == off
    assert pdl.pdl_launch(cuda, 1, allowed=False) == off
    monkeypatch.setenv(PDL_ENV, "0")  # the engine's switch: its steps launch with allowed=False
    assert not EngineOptions.from_environment().pdl


@CUDA
def test_prefetch_rule_takes_small_weights_with_bulk_prefetchable_rows(few_rows_gemm):
    """BERT-base's weights (≤ 768 × 3072) and BERT-large's attention output are prefetched under PDL,
    BERT-large's QKV and FC weights are not, nor rows the bulk prefetch cannot take (K % 8)."""
    def weight(n, k):
        return torch.empty(n, k, dtype=torch.float16, device="cuda")

    assert few_rows_gemm._prefetches(weight(3072, 768)) and few_rows_gemm._prefetches(weight(768, 3072))
    assert few_rows_gemm._prefetches(weight(1024, 1024))
    assert not few_rows_gemm._prefetches(weight(3072, 1024)) and not few_rows_gemm._prefetches(weight(4096, 1024))
    assert not few_rows_gemm._prefetches(weight(64, 60))


@CUDA
def test_refusals(few_rows_gemm):
    rows, weight = operands(8, 16, 32)
    with pytest.raises(ValueError, match="float16"):
        few_rows_gemm.linear(rows.float(), weight)
    with pytest.raises(ValueError, match="weight"):
        few_rows_gemm.linear(rows, weight[:, :16])
    with pytest.raises(ValueError, match="split_k 1"):
        few_rows_gemm.linear(rows, weight, config=few_rows_gemm.Config(64, 64, 64, 2, 4, 3))


@CUDA
def test_fast_plan_at_batch_1_runs_the_few_rows_gemm(tmp_path, monkeypatch, few_rows_gemm):
    from test_kernels import build_tiny_engine, run_plan

    from test_kernels import reference_and_fast_plans

    from helpers.portable.engine_file import read_engine

    calls = {"linear": 0, "partial_products": 0}
    for name in calls:
        original = getattr(few_rows_gemm, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(few_rows_gemm, name, counted)
    batch, seq = 1, 37
    description = read_engine(build_tiny_engine(tmp_path, True, batch, seq))
    dev = torch.device("cuda")
    reference_plan, fast = reference_and_fast_plans(description, dev)
    mask = torch.ones(batch, seq, dtype=torch.int32, device="cuda")
    mask[0, 30:] = 0
    inputs = (torch.randint(0, 97, (batch, seq), dtype=torch.int32, device="cuda"),
              torch.randint(0, 2, (batch, seq), dtype=torch.int32, device="cuda"), mask)
    expected = run_plan(reference_plan, description, inputs)
    got = run_plan(fast, description, inputs)
    # Per layer QKV and FC1 (+ the head once) finish in the GEMM; attention out and FC2 feed skip-LNs.
    assert calls == {"linear": 2 * 2 + 1, "partial_products": 2 * 2}
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
    _, cublaslt_plan = reference_and_fast_plans(description, dev, EngineOptions(few_rows_gemm=False))
    torch.testing.assert_close(run_plan(cublaslt_plan, description, inputs), expected, atol=2e-2, rtol=2e-2)
    assert calls == {"linear": 5, "partial_products": 4}
