"""INT8 arithmetic on the portable engine: quantization, the integer GEMM, INT8 attention and
skip-LayerNorm against float64 references and the fused-kernel formulas; CUDA against the CPU
simulation (GPU machine only). The engines built from them are tested in test_int8_engines.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers.portable import ops
from helpers.portable import quantization as q

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_quantize_rounds_half_to_even_and_saturates():
    scale = 0.5
    x = torch.tensor([0.25, 0.75, -0.25, -0.75, 1.25, 63.4, 64.0, 100.0, -100.0])
    assert q.quantize(x, scale).tolist() == [0, 2, 0, -2, 2, 127, 127, 127, -128]
    assert q.fake_quantize(x, scale).tolist() == [0.0, 1.0, 0.0, -1.0, 1.0, 63.5, 63.5, 63.5, -64.0]


def test_weights_get_one_scale_per_output_channel():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [-0.005, 0.02, 0.0]])
    qw = q.quantize_linear_weights(w)
    assert qw.scales.tolist() == pytest.approx([2.0 / 127, 1.0, 0.02 / 127])
    assert qw.codes.tolist() == [[64, -127, 32], [0, 0, 0], [-32, 127, 0]]
    assert qw.codes.is_contiguous() and qw.codes.t().stride() == (1, 3)  # the .t() view is column-major


def dequantized_reference(x, weight, bias, in_scale):
    """float64 F.linear of the dequantized operands: what the integer GEMM must reproduce."""
    qw = q.quantize_linear_weights(weight)
    x_deq = q.quantize(x, in_scale).double() * in_scale
    w_deq = qw.codes.double() * qw.scales.double()[:, None]
    return F.linear(x_deq, w_deq, bias.double())


@pytest.mark.parametrize("rows,k,n", [(1, 8, 8), (5, 37, 19), (33, 96, 64)])
def test_int8_linear_is_the_exact_integer_gemm(rows, k, n):
    x = torch.randn(rows, k, generator=gen(0)) * 3
    weight = torch.randn(n, k, generator=gen(1)) / math.sqrt(k)
    bias = torch.randn(n, generator=gen(2))
    in_scale = q.scale_from_amax(float(x.abs().max()))
    y = q.int8_linear(x, q.quantize_linear_weights(weight), bias, in_scale)
    torch.testing.assert_close(y.double(), dequantized_reference(x, weight, bias, in_scale), rtol=1e-6, atol=1e-5)
    # ...and close to the float GEMM it stands for.
    assert F.cosine_similarity(y.flatten(), F.linear(x, weight, bias).flatten(), dim=0) > 0.999


def test_int8_linear_output_scale_makes_an_int8_tensor():
    x = torch.randn(4, 3, 16, generator=gen(3))
    weight = torch.randn(24, 16, generator=gen(4))
    out_scale = 0.05
    y = q.int8_linear(x, q.quantize_linear_weights(weight), None, 0.03, out_scale)
    assert y.shape == (4, 3, 24)
    codes = y / out_scale
    torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
    assert codes.abs().max() <= 128


def spec_int8_attention(qkv, mask_idx, heads, s_qkv, s_ctx, dq_probs):
    """The fused INT8 MHA (docs/SPEC.md "Attention plugin") written out per (batch, head) in float64, as the oracle."""
    seq, batch, width = qkv.shape
    size = width // (3 * heads)
    codes = torch.clamp(torch.round(qkv.double() / s_qkv), -128, 127)
    out = torch.zeros(seq, batch, heads * size, dtype=torch.float64)
    for b in range(batch):
        valid = int(mask_idx[b])
        for n in range(heads):
            base = n * 3 * size
            qh, kh, vh = (codes[:, b, base + i * size : base + (i + 1) * size] for i in range(3))
            scores = (qh @ kh[:valid].T) * (s_qkv * s_qkv / math.sqrt(size))
            probs = torch.softmax(scores, dim=-1)
            prob_codes = torch.clamp(torch.round(probs / dq_probs), 0, 127)
            ctx = (prob_codes @ vh[:valid]) * (dq_probs * s_qkv)
            out[:, b, n * size : (n + 1) * size] = torch.clamp(torch.round(ctx / s_ctx), -128, 127) * s_ctx
    return out


def test_int8_attention_follows_the_fused_kernel_arithmetic():
    seq, batch, heads, head_size = 24, 2, 3, 16
    qkv = torch.randn(seq, batch, 3 * heads * head_size, generator=gen(5)) * 2
    mask_idx = torch.tensor([24, 13])
    qkv_scale = q.scale_from_amax(float(qkv.abs().max()))
    float_ctx = ops.attention_fixed(qkv, mask_idx, heads)
    ctx_scale = q.scale_from_amax(float(float_ctx.abs().max()))
    got = q.int8_attention(qkv, mask_idx, heads, qkv_scale, ctx_scale, 1 / 127)
    expected = spec_int8_attention(qkv, mask_idx, heads, qkv_scale, ctx_scale, 1 / 127)
    got_codes, expected_codes = torch.round(got.double() / ctx_scale), torch.round(expected / ctx_scale)
    assert (got_codes - expected_codes).abs().max() <= 1
    assert (got_codes != expected_codes).double().mean() < 0.01
    # ...and it stays close to float attention.
    assert F.cosine_similarity(got.flatten(), float_ctx.flatten(), dim=0) > 0.99
    # Masked keys are ignored: changing them changes nothing.
    changed = qkv.clone()
    changed[13:, 1] = 5.0
    torch.testing.assert_close(q.int8_attention(changed, mask_idx, heads, qkv_scale, ctx_scale, 1 / 127)[:13, 1], got[:13, 1])


def test_packed_int8_attention_is_per_sequence_int8_attention():
    heads, head_size = 2, 8
    qkv = torch.randn(20, 3 * heads * head_size, generator=gen(20))
    bounds = [0, 5, 12, 12, 20]  # includes an empty sequence
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32)
    args = (heads, 0.03, 0.02, 1 / 127)
    packed = q.int8_attention_varlen(qkv, cu_seqlens, 9, *args)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            alone = q.int8_attention(qkv[start:end].unsqueeze(1), None, *args).squeeze(1)
            torch.testing.assert_close(packed[start:end], alone)


def test_int8_skip_layernorm_is_layernorm_of_dequantized_inputs():
    x = torch.randn(5, 2, 32, generator=gen(6))
    skip = torch.randn(5, 2, 32, generator=gen(7)) * 2
    gamma = 1 + 0.1 * torch.randn(32, generator=gen(8))
    beta = 0.1 * torch.randn(32, generator=gen(9))
    x_scale, skip_scale, out_scale = 0.03, 0.05, 0.04
    out, summed = q.int8_skip_layernorm(x, skip, gamma, beta, x_scale, skip_scale, out_scale)
    ref, ref_sum = ops.skip_layernorm(q.fake_quantize(x, x_scale), q.fake_quantize(skip, skip_scale), gamma, beta)
    torch.testing.assert_close(summed, ref_sum)
    assert (out - ref).abs().max() <= out_scale * 0.5 + 1e-5
    torch.testing.assert_close(out / out_scale, (out / out_scale).round(), atol=1e-4, rtol=0)


def test_fp8_linear_stays_close_to_the_float_gemm():
    x = torch.randn(40, 64, generator=gen(10))
    weight = torch.randn(48, 64, generator=gen(11)) / 8
    bias = torch.randn(48, generator=gen(12))
    y = q.fp8_linear(x, q.quantize_fp8_weights(weight), bias, q.fp8_input_scale(float(x.abs().max()), "cpu"))
    assert F.cosine_similarity(y.flatten(), F.linear(x, weight, bias).flatten(), dim=0) > 0.995


@CUDA
@pytest.mark.parametrize("rows,k,n", [(3, 40, 24), (300, 1024, 1024), (257, 384, 1536)])
def test_cuda_int8_linear_agrees_with_the_cpu_simulation(rows, k, n):
    x = torch.randn(rows, k, generator=gen(13))
    weight = torch.randn(n, k, generator=gen(14)) / math.sqrt(k)
    bias = torch.randn(n, generator=gen(15))
    in_scale, out_scale = q.scale_from_amax(float(x.abs().max())), 0.02
    qw = q.quantize_linear_weights(weight)
    cpu = q.int8_linear(x, qw, bias, in_scale, out_scale)
    gpu = q.int8_linear(x.cuda(), qw.to("cuda"), bias.cuda(), in_scale, out_scale).cpu()
    # Same integers; only float rounding of the dequantization may move a value by one step.
    assert (gpu - cpu).abs().max() <= out_scale * 1.001
    assert (gpu != cpu).float().mean() < 0.01


@CUDA
def test_cuda_int8_plugins_agree_with_the_cpu_simulation():
    qkv = torch.randn(128, 4, 3 * 4 * 64, generator=gen(16))
    mask_idx = torch.tensor([128, 100, 7, 64])
    args = (4, q.scale_from_amax(float(qkv.abs().max())), 0.02, 1 / 127)
    cpu = q.int8_attention(qkv, mask_idx, *args)
    gpu = q.int8_attention(qkv.cuda(), mask_idx.cuda(), *args).cpu()
    assert (gpu - cpu).abs().max() <= 0.02 * 1.001
    x, skip = torch.randn(2, 128, 4, 256, generator=gen(17))
    gamma, beta = torch.ones(256), torch.zeros(256)
    cpu_ln, _ = q.int8_skip_layernorm(x, skip, gamma, beta, 0.03, 0.03, 0.04)
    gpu_ln, _ = q.int8_skip_layernorm(x.cuda(), skip.cuda(), gamma.cuda(), beta.cuda(), 0.03, 0.03, 0.04)
    assert (gpu_ln.cpu() - cpu_ln).abs().max() <= 0.04 * 1.001


@CUDA
def test_cuda_fp8_linear_agrees_with_the_cpu_emulation():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need SM 8.9+")
    x = torch.randn(64, 256, generator=gen(18))
    weight = torch.randn(128, 256, generator=gen(19)) / 16
    w8 = q.quantize_fp8_weights(weight)
    amax = float(x.abs().max())
    cpu = q.fp8_linear(x, w8, None, q.fp8_input_scale(amax, "cpu"))
    gpu = q.fp8_linear(x.cuda(), q.Fp8Weight(w8.codes.cuda(), w8.scale.cuda()), None, q.fp8_input_scale(amax, "cuda")).cpu()
    # Hopper's FP8 tensor cores accumulate in a narrower format inside each 128-wide K block
    # (measured 1.1e-3 off the exact product here), so only the CPU emulation is exact.
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=2e-3 * float(cpu.abs().max()))


def reference_gelu(y: torch.Tensor, form: str) -> torch.Tensor:
    """The GELU of ``form`` in float32: the builder's tanh chain, or PyTorch's exact erf GELU."""
    return ops.gelu_tanh(y.float()) if form == "tanh" else F.gelu(y.float())


@CUDA
@pytest.mark.parametrize("gelu", [None, "tanh", "erf"])
def test_cuda_fused_int8_gemm_is_the_reference_gemm(gelu):
    from helpers.portable.int8_plan import int8_gemm
    from helpers.portable.kernels.int8_steps import fast_8bit_gemm

    x = torch.randn(300, 1024, generator=gen(30)).cuda().half()
    weight = (torch.randn(520, 1024, generator=gen(31)) / 32).cuda()
    bias = torch.randn(520, generator=gen(32)).cuda()
    amax = float(x.abs().max())
    reference = int8_gemm(weight, bias, amax)(x)
    if gelu is not None:
        reference = reference_gelu(reference, gelu)
    fused = fast_8bit_gemm(weight, bias, amax, False, gelu is not None, torch.float16, form=gelu or "tanh")(x).float()
    # Same codes except where a float32 division rounds across a tie: one input step.
    step = q.scale_from_amax(amax) * float(weight.abs().max())
    assert (fused - reference.float()).abs().max() <= step + 2e-3 * float(reference.abs().max())


@CUDA
@pytest.mark.parametrize("gelu", [None, "tanh", "erf"])
@pytest.mark.parametrize("m, n, k", [(300, 512, 1024), (17, 72, 40)])
def test_cuda_fused_fp8_gemm_is_the_reference_gemm(gelu, m, n, k):
    """The FP8 engine's GEMM step (the Triton GEMM on E4M3 codes, behind its quantize pass) against
    ``int8_plan.fp8_gemm`` (``_scaled_mm`` where it applies, else the float32 emulation)."""
    from helpers.portable.int8_plan import fp8_gemm
    from helpers.portable.kernels.int8_steps import fast_8bit_gemm

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need SM 8.9+")
    x = torch.randn(m, k, generator=gen(33)).cuda().half()
    weight = (torch.randn(n, k, generator=gen(34)) / 32).cuda()
    bias = torch.randn(n, generator=gen(35)).cuda()
    amax = float(x.abs().max())
    reference = fp8_gemm(weight, bias, amax)(x).float()
    if gelu is not None:
        reference = reference_gelu(reference, gelu)
    fused = fast_8bit_gemm(weight, bias, amax, True, gelu is not None, torch.float16, form=gelu or "tanh")(x).float()
    torch.testing.assert_close(fused, reference, rtol=0, atol=5e-3 * float(reference.abs().max()))


@CUDA
@pytest.mark.parametrize("launch", [(1, 4), (4, 8), (8, 4), (2, 1)])
@pytest.mark.parametrize("shape", [(2, 64, 8, 1024), (3, 37, 768)])
def test_cuda_fused_int8_skip_layernorm_is_the_reference(shape, launch):
    from helpers.portable.kernels import quant_kernels

    x, skip = (t.cuda().half() for t in torch.randn(2, *shape, generator=gen(36)))
    gamma, beta, bias = (t.cuda() for t in torch.randn(3, shape[-1], generator=gen(37)))
    scales = (0.03, 0.025, 0.04)
    reference, _ = q.int8_skip_layernorm(x, skip, gamma, beta, *scales, 1e-5, bias)
    fused = torch.empty_like(x)
    quant_kernels.int8_skip_layernorm_into(fused, x, skip, gamma, beta, bias, *scales, 1e-5, launch=launch)
    # One step (a tie rounded the other way), plus the FP16 rounding of the INT8 values (codes · scale).
    assert (fused.float() - reference.float()).abs().max() <= scales[2] + 2**-11 * float(reference.abs().max())


@CUDA
def test_cuda_int8_skip_layernorm_on_codes_makes_the_same_codes():
    """The INT8 engine's hand-overs: x and skip given as their int8 codes (as the GEMM epilogue and
    the previous skip-LayerNorm write them) and the output written as codes give exactly the codes
    of the float-values path (each input quantized by the kernel, the output as INT8 values)."""
    from helpers.portable.kernels import quant_kernels as qk

    x, skip = (t.cuda().half() for t in torch.randn(2, 64, 8, 1024, generator=gen(38)))
    gamma, beta, bias = (t.cuda() for t in torch.randn(3, 1024, generator=gen(39)))
    x_scale, skip_scale, out_scale = 0.03, 0.025, 0.04
    args = (gamma, beta, bias, x_scale, skip_scale, out_scale, 1e-5)
    x_codes, skip_codes = torch.empty_like(x, dtype=torch.int8), torch.empty_like(skip, dtype=torch.int8)
    qk.quantize_into(x_codes, x, qk.INT8_CODES, x_scale)
    qk.quantize_into(skip_codes, skip, qk.INT8_CODES, skip_scale)
    skip_values = (skip_codes.float() * skip_scale).half()  # the previous skip-LayerNorm's float output

    values = torch.empty_like(x)
    qk.int8_skip_layernorm_into(values, x, skip_values, *args)
    codes = torch.empty_like(x, dtype=torch.int8)
    qk.int8_skip_layernorm_into(codes, x_codes, skip_codes, *args)
    assert torch.equal((codes.float() * out_scale).half(), values)
    # ...and the GEMM behind it, quantizing the float output, reads the codes written directly.
    requantized = torch.empty_like(codes)
    qk.quantize_into(requantized, values, qk.INT8_CODES, out_scale)
    assert torch.equal(requantized, codes)
    mixed = torch.empty_like(codes)
    qk.int8_skip_layernorm_into(mixed, x, skip_codes, *args)
    assert torch.equal(mixed, codes)


def e4m3(values: torch.Tensor, scale: float) -> torch.Tensor:
    """``fp8_linear``'s E4M3 codes of float values (float32 division, saturated)."""
    return (values.float() / torch.tensor(scale, dtype=torch.float32)).clamp(-448, 448).to(torch.float8_e4m3fn)


@CUDA
@pytest.mark.parametrize("shape", [(2, 64, 8, 1024), (3, 37, 768)])
def test_cuda_int8_skip_layernorm_writes_the_e4m3_codes_an_fp8_gemm_makes(shape):
    """FP8 output: bit for bit the codes the FP8 GEMM's quantize pass (and PyTorch's cast) makes from the
    FP16 INT8 values the float output holds, from float or int8 inputs."""
    from helpers.portable.kernels import quant_kernels as qk

    x, skip = (t.cuda().half() for t in torch.randn(2, *shape, generator=gen(50)))
    gamma, beta, bias = (t.cuda() for t in torch.randn(3, shape[-1], generator=gen(51)))
    args = (gamma, beta, bias, 0.03, 0.025, 0.04, 1e-5)
    fp8_scale = 0.04 * 127 / 448 * 0.9  # the output's range on E4M3's; some values saturate
    values = torch.empty_like(x)
    qk.int8_skip_layernorm_into(values, x, skip, *args)
    codes = torch.empty_like(x, dtype=torch.float8_e4m3fn)
    qk.int8_skip_layernorm_into(codes, x, skip, *args, fp8_scale=fp8_scale, value_dtype=torch.float16)
    quantized = torch.empty_like(codes)
    qk.quantize_into(quantized, values, qk.FP8_CODES, fp8_scale)
    assert torch.equal(codes.view(torch.int8), quantized.view(torch.int8))
    assert torch.equal(codes.cpu().float(), e4m3(values.cpu(), fp8_scale).float())
    with pytest.raises(ValueError, match="FP8 output"):
        qk.int8_skip_layernorm_into(codes, x, skip, *args)


@CUDA
@pytest.mark.parametrize("value_dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("shape, codes_in", [((2, 64, 8, 1024), True), ((3, 37, 768), False), ((5, 1, 72), True),
                                             ((1, 1000, 40), False)])
def test_cuda_int8_skip_layernorm_writes_both_codes_in_one_pass(shape, codes_in, value_dtype):
    """int8 codes plus an E4M3 copy (the FP8 engine's skip-LayerNorm output read by the next
    skip-LayerNorm and the next FP8 GEMM): bit for bit the int8 codes of the single-output pass, and
    the E4M3 codes the FP8 GEMM's quantize pass makes from the float output of ``value_dtype``."""
    from helpers.portable.kernels import quant_kernels as qk

    x, skip = (t.cuda().to(value_dtype) for t in torch.randn(2, *shape, generator=gen(52)))
    if codes_in:
        x, skip = (q.quantize(t.float(), scale).cuda() for t, scale in ((x, 0.03), (skip, 0.025)))
    gamma, beta, bias = (t.cuda() for t in torch.randn(3, shape[-1], generator=gen(53)))
    args = (gamma, beta, bias, 0.03, 0.025, 0.04, 1e-5)
    fp8_scale = 0.04 * 127 / 448 * 0.9  # some values saturate
    codes = torch.empty(shape, dtype=torch.int8, device="cuda")
    qk.int8_skip_layernorm_into(codes, x, skip, *args)
    values = torch.empty(shape, dtype=value_dtype, device="cuda")
    qk.int8_skip_layernorm_into(values, x, skip, *args)
    quantized = torch.empty(shape, dtype=torch.float8_e4m3fn, device="cuda")
    qk.quantize_into(quantized, values, qk.FP8_CODES, fp8_scale)

    both_codes, copy = torch.empty_like(codes), torch.empty_like(quantized)
    qk.int8_skip_layernorm_into(both_codes, x, skip, *args, fp8_scale=fp8_scale, value_dtype=value_dtype,
                                fp8_copy=copy)
    assert torch.equal(both_codes, codes)
    assert torch.equal(copy.view(torch.int8), quantized.view(torch.int8))
    with pytest.raises(ValueError, match="FP8 output"):
        qk.int8_skip_layernorm_into(both_codes, x, skip, *args, fp8_copy=copy)


# (S, B, heads, head size, (BLOCK_M, BLOCK_N, warps), dq_probs): BERT's head size and the tiny test
# models', lengths that are no multiple of the blocks or are (the last valid key ending a block),
# heads narrower than their tile, one or several key blocks, probability codes that reach 127 or
# saturate there.
INT8_ATTENTION_CASES = [
    (37, 3, 2, 64, (64, 128, 4), 1 / 127),
    (130, 2, 3, 64, (64, 64, 4), 1 / 127),
    (384, 1, 2, 64, (128, 128, 8), 1 / 127),
    (384, 2, 2, 64, (32, 512, 4), 1 / 255),
    (20, 3, 4, 16, (16, 32, 4), 1 / 255),
    (256, 3, 2, 48, (32, 64, 4), 1 / 127),
]


def one_probability_code(dq_probs: float, qkv_scale: float, ctx_scale: float) -> int:
    """Context steps a probability code moving by one (at a rounding tie) can move an output by:
    one V code's share, |v| · dq_probs · s_qkv ≤ 127 · dq_probs · s_qkv, plus the output's rounding."""
    return math.ceil(127 * dq_probs * qkv_scale / ctx_scale) + 1


@CUDA
@pytest.mark.parametrize("seq, batch, heads, head, blocks, dq_probs", INT8_ATTENTION_CASES)
@pytest.mark.parametrize("codes_in, out_dtype", [(True, torch.int8), (False, torch.float16), (False, torch.float32)])
def test_cuda_int8_attention_is_the_reference(seq, batch, heads, head, blocks, dq_probs, codes_in, out_dtype):
    """The Triton -imh attention against ``quantization.int8_attention``: outputs off only where a
    probability's exp2 lands on the other side of a rounding tie (its code moves by one, the
    context by at most one V code's share of it), rarely; sequences with all, some and no valid keys."""
    from helpers.portable.kernels.int8_attention import int8_attention_into

    qkv_codes = torch.randint(-127, 128, (seq, batch, 3 * heads * head), generator=gen(60 + seq), dtype=torch.int8)
    qkv_scale, ctx_scale = 0.02, 0.004
    mask_idx = torch.tensor([seq, max(1, seq // 3), 0][:batch], dtype=torch.int32)
    values = qkv_codes.float() * qkv_scale
    reference = q.quantize(q.int8_attention(values, mask_idx, heads, qkv_scale, ctx_scale, dq_probs), ctx_scale)
    assert int((reference != 0).sum()) > reference.numel() // 4  # the context is not all zeros
    qkv = qkv_codes if codes_in else values.to(out_dtype if out_dtype != torch.int8 else torch.float16)
    out = torch.empty(seq, batch, heads * head, dtype=out_dtype, device="cuda")
    int8_attention_into(out, qkv.cuda(), mask_idx.cuda(), heads, qkv_scale, ctx_scale, dq_probs, blocks=blocks)
    got = out.cpu().int() if out_dtype == torch.int8 else torch.round(out.cpu().float() / ctx_scale).int()
    off = (got - reference.int()).abs()
    assert int(off.max()) <= one_probability_code(dq_probs, qkv_scale, ctx_scale)
    assert float((off > 0).float().mean()) < 0.01
    if batch == 3:
        assert not got[:, 2].any()  # no valid key: probabilities 0, context 0


@CUDA
def test_cuda_int8_attention_refuses_sizes_whose_products_would_not_be_exact():
    from helpers.portable.kernels.int8_attention import int8_attention_into

    for seq, head in ((1041, 64), (8, 256)):
        qkv = torch.zeros(seq, 1, 3 * head, dtype=torch.int8, device="cuda")
        out = torch.empty(seq, 1, head, dtype=torch.int8, device="cuda")
        with pytest.raises(ValueError, match="exact"):
            int8_attention_into(out, qkv, None, 1, 0.02, 0.004, 1 / 127)


@CUDA
def test_cuda_fast_int8_attention_step_takes_the_plugin_mask():
    """``int8_steps.fast_int8_attention``, as the lowering runs it: the plugin's [S, B, 3E, 1, 1] input
    and its [B, 1] mask, the context returned as codes."""
    from helpers.portable.int8_plan import HandoverCodes
    from helpers.portable.kernels.int8_steps import fast_int8_attention

    raw = torch.randn(128, 4, 3 * 4 * 64, 1, 1, generator=gen(38))
    qkv_scale, ctx_scale, dq_probs = q.scale_from_amax(float(raw.abs().max())), 0.02, 1 / 127
    qkv = q.fake_quantize(raw, qkv_scale)  # on the INT8 grid: FP16 keeps its codes
    mask = torch.tensor([128, 100, 7, 64], dtype=torch.int32)[:, None]
    reference = q.quantize(q.int8_attention(qkv.flatten(2), mask[:, 0], 4, qkv_scale, ctx_scale, dq_probs), ctx_scale)
    attention = fast_int8_attention(4, True, qkv_scale, ctx_scale, dq_probs, torch.float16,
                                    HandoverCodes(torch.int8, ctx_scale))
    (codes,) = attention(qkv.cuda().half(), mask.cuda())
    assert codes.shape == (128, 4, 4 * 64, 1, 1) and codes.dtype == torch.int8
    off = (codes.cpu().flatten(2).int() - reference.int()).abs()
    assert int(off.max()) <= one_probability_code(dq_probs, qkv_scale, ctx_scale)
    assert float((off > 0).float().mean()) < 0.01
    # E4M3 codes for an FP8 GEMM: PyTorch's cast of the FP16 context values, bit for bit.
    (values,) = fast_int8_attention(4, True, qkv_scale, ctx_scale, dq_probs, torch.float16)(qkv.cuda().half(),
                                                                                            mask.cuda())
    fp8_scale = ctx_scale * 127 / 448
    (fp8_codes,) = fast_int8_attention(4, True, qkv_scale, ctx_scale, dq_probs, torch.float16,
                                       HandoverCodes(torch.float8_e4m3fn, fp8_scale))(qkv.cuda().half(), mask.cuda())
    assert fp8_codes.dtype == torch.float8_e4m3fn
    assert torch.equal(fp8_codes.cpu().float(), e4m3(values.cpu(), fp8_scale).float())
