"""The INT8 / FP8 engines' CUDA GEMM (helpers/portable/kernels/int8_gemm.py) and the 8-bit hand-overs.

* Kernel (GPU machine only): the Triton INT8 GEMMs (cp.async and TMA) against the exact integer
  product (float64 on the CPU) with the float32 epilogue of ``quantization.int8_linear`` (+
  ``ops.gelu_tanh``, or PyTorch's exact erf GELU), on awkward sizes, every epilogue and every
  tuning configuration; the same kernel on FP8 E4M3 operands against the float64 product of their
  values, and its E4M3 code output against PyTorch's cast of its float output.
* Plan: which tensors the lowered CUDA plan hands over as int8 codes (decided on
  the CPU from a built engine), and, on the GPU, that the hand-overs change no result.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.portable import ops
from helpers.portable import quantization as q

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")
SEQ = 128


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_codes(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.randint(-128, 128, (rows, cols), generator=gen(seed), dtype=torch.int8)


def exact_product(codes: torch.Tensor, weight_codes: torch.Tensor) -> torch.Tensor:
    """int64 ``codes · weight_codesᵀ`` (float64 on the CPU: every partial sum is an integer < 2^53)."""
    return (codes.double() @ weight_codes.double().t()).long()


def reference_epilogue(acc: torch.Tensor, col_scales: torch.Tensor, bias: torch.Tensor | None, gelu: bool,
                       form: str = "tanh") -> torch.Tensor:
    """float32 ``acc · col_scales + bias`` (then the GELU of ``form``), as ``int8_linear`` dequantizes."""
    y = acc.float() * col_scales
    if bias is not None:
        y = y + bias
    if not gelu:
        return y
    return ops.gelu_tanh(y) if form == "tanh" else F.gelu(y)


# ---------------------------------------------------------------------------------------------
# Kernel

SIZES = [(1, 8, 16), (17, 72, 64), (128, 1024, 1024), (1000, 3072, 64), (1000, 72, 1024), (17, 3072, 1024)]


@CUDA
@pytest.mark.parametrize("m, n, k", SIZES)
def test_unit_scales_give_the_exact_integer_product(m, n, k):
    """float32 output, scales 1, no bias: |acc| ≤ 128²·1024 < 2^24, so float32 holds it exactly."""
    from helpers.portable.kernels.int8_gemm import int8_gemm_into

    codes, weight_codes = random_codes(m, k, 1), random_codes(n, k, 2)
    out = torch.empty(m, n, device="cuda")
    int8_gemm_into(out, codes.cuda(), weight_codes.cuda(), torch.ones(n, device="cuda"))
    assert torch.equal(out.cpu().long(), exact_product(codes, weight_codes))


@CUDA
def test_every_tuning_configuration_is_the_exact_product():
    """Each configuration of both kernels pinned, on a K that is not a multiple of the K block
    (the cp.async kernel's masked tail, the TMA kernel's zero-filled one) and M, N not multiples of
    the tiles.  The TMA kernel writes 2-byte outputs only: its codes are in {-1, 0, 1}, so every
    product (|acc| ≤ 1040) is exact in float16."""
    from helpers.portable.kernels.int8_gemm import CONFIGS, TMA_CONFIGS, int8_gemm_into

    m, n, k = 300, 200, 1040
    codes, weight_codes = random_codes(m, k, 3), random_codes(n, k, 4)
    expected = exact_product(codes, weight_codes)
    for config in CONFIGS:
        out = torch.empty(m, n, device="cuda")
        int8_gemm_into(out, codes.cuda(), weight_codes.cuda(), torch.ones(n, device="cuda"), config=config)
        assert torch.equal(out.cpu().long(), expected), config
    small, small_weights = codes.sign(), weight_codes.sign()
    expected = exact_product(small, small_weights)
    for config in TMA_CONFIGS:
        out = torch.empty(m, n, dtype=torch.float16, device="cuda")
        int8_gemm_into(out, small.cuda(), small_weights.cuda(), torch.ones(n, device="cuda"), config=config)
        assert torch.equal(out.cpu().long(), expected), config
    with pytest.raises(ValueError, match="TMA configuration"):
        int8_gemm_into(torch.empty(m, n, device="cuda"), small.cuda(), small_weights.cuda(), torch.ones(n, device="cuda"),
                       config=TMA_CONFIGS[0])


@CUDA
def test_operands_tma_cannot_read_take_the_cp_async_kernel():
    """Large M (the TMA kernel's range) and float16 output with a code matrix at an odd address:
    the same product (codes in {-1, 0, 1}: exact in float16)."""
    from helpers.portable.kernels.int8_gemm import int8_gemm_into

    m, n, k = 600, 256, 512
    codes, weight_codes = random_codes(m, k, 5).sign(), random_codes(n, k, 6).sign()
    storage = torch.empty(m * k + 1, dtype=torch.int8, device="cuda")
    odd = storage[1:].view(m, k)
    odd.copy_(codes)
    out = torch.empty(m, n, dtype=torch.float16, device="cuda")
    int8_gemm_into(out, odd, weight_codes.cuda(), torch.ones(n, device="cuda"))
    assert torch.equal(out.cpu().long(), exact_product(codes, weight_codes))


def pinned(kernel: str, index: int):
    """A configuration of the cp.async (``CONFIGS``) or TMA (``TMA_CONFIGS``) kernel."""
    from helpers.portable.kernels.int8_gemm import CONFIGS, TMA_CONFIGS

    configs = CONFIGS if kernel == "cp.async" else TMA_CONFIGS
    return configs[index % len(configs)]


def epilogue_inputs(m: int, n: int, k: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Codes and the scales of a realistic GEMM: ``|y|`` of order 1-10."""
    codes, weight_codes = random_codes(m, k, seed), random_codes(n, k, seed + 1)
    col_scales = (torch.rand(n, generator=gen(seed + 2)) + 0.5) * (4.0 / (127 * 127 * k**0.5))
    bias = torch.randn(n, generator=gen(seed + 3))
    return codes, weight_codes, col_scales, bias


# (m, n, k, bias, gelu, kernel and index of the pinned configuration: each epilogue under several
# tile shapes of both kernels)
EPILOGUE_CASES = [
    (1, 72, 1024, True, True, "cp.async", 0),
    (17, 8, 64, False, False, "cp.async", 1),
    (128, 3072, 1024, True, False, "cp.async", 2),
    (1000, 1024, 16, True, True, "cp.async", 3),
    (1000, 72, 1024, False, True, "cp.async", 4),
    (300, 200, 1040, True, True, "cp.async", 5),
    (17, 8, 64, True, True, "tma", 0),
    (1000, 1024, 16, True, False, "tma", 1),
    (1000, 72, 1024, False, True, "tma", 2),
    (300, 200, 1040, True, True, "tma", 3),
    (700, 520, 256, True, True, "tma", 4),
    (2000, 300, 128, True, False, "tma", 5),
]
GELU_FORMS = ("tanh", "erf")  # each GELU case in both forms


@CUDA
@pytest.mark.parametrize("m, n, k, with_bias, gelu, kernel, config_index, out_dtype, form",
                         [(*case, dtype, form) for case in EPILOGUE_CASES for dtype in (torch.float32, torch.float16)
                          for form in GELU_FORMS if (case[5] == "cp.async" or dtype == torch.float16)
                          and (case[4] or form == "tanh")])
def test_float_output_is_the_reference_epilogue(m, n, k, with_bias, gelu, kernel, config_index, out_dtype, form):
    from helpers.portable.kernels.int8_gemm import int8_gemm_into

    codes, weight_codes, col_scales, bias = epilogue_inputs(m, n, k, 10)
    bias = bias if with_bias else None
    reference = reference_epilogue(exact_product(codes, weight_codes), col_scales, bias, gelu, form)
    out = torch.empty(m, n, dtype=out_dtype, device="cuda")
    int8_gemm_into(out, codes.cuda(), weight_codes.cuda(), col_scales.cuda(), None if bias is None else bias.cuda(),
                   gelu=gelu, config=pinned(kernel, config_index), form=form)
    # float32 rounding of the epilogue (the kernel's tanh is 1 - 2/(exp(2u)+1)), then the output's:
    # far below |erf GELU - tanh GELU| (up to 5e-4), so a float32 output pins the form.
    tolerance = 1e-6 * float(reference.abs().max()) if out_dtype == torch.float32 else 0.0
    torch.testing.assert_close(out.cpu().float(), reference.to(out_dtype).float(), rtol=2e-6 if out_dtype == torch.float32
                               else 1e-3, atol=tolerance + 1e-6)


@CUDA
@pytest.mark.parametrize("value_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m, n, k, with_bias, gelu, kernel, config_index, form",
                         [(*case, form) for case in EPILOGUE_CASES for form in GELU_FORMS if case[4] or form == "tanh"])
def test_int8_outputs_are_the_next_tensors_grid(m, n, k, with_bias, gelu, kernel, config_index, form, value_dtype):
    """Codes on ``out_scale``'s grid, from the value rounded to ``value_dtype``: at most one code off
    the reference (a float32 division of a tie; with FP16 values, the hardware tanh of the GELU)."""
    from helpers.portable.kernels.int8_gemm import int8_gemm_into

    codes, weight_codes, col_scales, bias = epilogue_inputs(m, n, k, 20)
    bias = bias if with_bias else None
    y = reference_epilogue(exact_product(codes, weight_codes), col_scales, bias, gelu, form).to(value_dtype)
    out_scale = float(y.abs().max()) / 127 * 0.8  # some values saturate
    reference = q.quantize(y, out_scale)
    args = (codes.cuda(), weight_codes.cuda(), col_scales.cuda(), None if bias is None else bias.cuda())

    out_codes = torch.empty(m, n, dtype=torch.int8, device="cuda")
    config = pinned(kernel, config_index)
    int8_gemm_into(out_codes, *args, gelu=gelu, out_scale=out_scale, value_dtype=value_dtype, config=config, form=form)
    off = (out_codes.cpu().int() - reference.int()).abs()
    assert int(off.max()) <= 1 and float((off > 0).float().mean()) < 0.01


def fc1_fc2_operands(seed: int) -> tuple[torch.Tensor, ...]:
    """On CUDA: FP16 rows x [300, 256], then FC1's weight [512, 256] and bias and FC2's weight
    [256, 512] and bias, for the FC1 → GELU → FC2 hand-over tests."""
    x = torch.randn(300, 256, generator=gen(seed)).cuda().half()
    w1, w2 = (torch.randn(n, k, generator=gen(seed + 1 + n)).cuda() / 16 for n, k in ((512, 256), (256, 512)))
    b1, b2 = (torch.randn(n, generator=gen(seed + 3 + n)).cuda() for n in (512, 256))
    return x, w1, b1, w2, b2


@CUDA
def test_a_gemm_fed_int8_codes_is_the_gemm_fed_their_float_values():
    """fast_8bit_gemm: the FC1 → GELU → FC2 hand-over.  FC1 writing FC2's codes gives FC2 the same
    input as FC1's float output quantized by FC2's own pass."""
    from helpers.portable.int8_plan import HandoverCodes
    from helpers.portable.kernels.int8_steps import fast_8bit_gemm

    x, w1, b1, w2, b2 = fc1_fc2_operands(40)
    x_amax, gelu_amax = float(x.abs().max()), 3.0
    fc1_float = fast_8bit_gemm(w1, b1, x_amax, False, True, torch.float16)(x)
    fc1_codes = fast_8bit_gemm(w1, b1, x_amax, False, True, torch.float16,
                               HandoverCodes(torch.int8, q.scale_from_amax(gelu_amax)))(x)
    assert fc1_codes.dtype == torch.int8
    expected = q.quantize(fc1_float, q.scale_from_amax(gelu_amax))
    assert int((fc1_codes.int() - expected.int()).abs().max()) <= 1
    fc2 = fast_8bit_gemm(w2, b2, gelu_amax, False, False, torch.float16)
    assert torch.equal(fc2(fc1_codes), fc2(q.dequantize(fc1_codes, q.scale_from_amax(gelu_amax), torch.float16)))


# ---------------------------------------------------------------------------------------------
# FP8 E4M3 operands


def fp8_epilogue_inputs(m: int, n: int, k: int, seed: int) -> tuple[torch.Tensor, ...]:
    """E4M3 codes (values up to a few hundred, some subnormal) and scales giving ``|y|`` of order 1-10."""
    codes, weight_codes = ((torch.randn(rows, k, generator=gen(seed + i)) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
                           for i, rows in enumerate((m, n)))
    col_scales = (torch.rand(n, generator=gen(seed + 2)) + 0.5) * (4.0 / (64 * 64 * k**0.5))
    bias = torch.randn(n, generator=gen(seed + 3))
    return codes, weight_codes, col_scales, bias


def fp8_product(codes: torch.Tensor, weight_codes: torch.Tensor) -> torch.Tensor:
    """The float64 product of E4M3 codes' values (exact: 4-bit significands, sums far below 2^53)."""
    return codes.float().double() @ weight_codes.float().double().t()


def e4m3(values: torch.Tensor, scale: float) -> torch.Tensor:
    """PyTorch's E4M3 codes of ``values / scale`` (float32 division, saturated): ``fp8_linear``'s cast."""
    return (values.float() / torch.tensor(scale, dtype=torch.float32)).clamp(-448, 448).to(torch.float8_e4m3fn)


@CUDA
@pytest.mark.parametrize("m, n, k, with_bias, gelu, kernel, config_index, form",
                         [(*case, form) for case in EPILOGUE_CASES for form in GELU_FORMS if case[4] or form == "tanh"])
def test_fp8_operands_give_the_reference_epilogue_and_its_e4m3_codes(m, n, k, with_bias, gelu, kernel, config_index,
                                                                     form):
    """FP8 operands, float32 accumulation: the reference epilogue up to the FP8 tensor cores' narrower
    in-block sums; E4M3 codes out (the next FP8 GEMM's input) are PyTorch's cast of the FP16 value
    the float output holds, bit for bit without the GELU (the same epilogue), and with it off by one
    E4M3 step on at most 1 % of them (the hardware tanh)."""
    from helpers.portable.kernels.int8_gemm import int8_gemm_into

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need SM 8.9+")
    codes, weight_codes, col_scales, bias = fp8_epilogue_inputs(m, n, k, 70)
    bias = bias if with_bias else None
    reference = reference_epilogue(fp8_product(codes, weight_codes).float(), col_scales, bias, gelu, form)
    args = (codes.cuda(), weight_codes.cuda(), col_scales.cuda(), None if bias is None else bias.cuda())
    config = pinned(kernel, config_index)
    values = torch.empty(m, n, dtype=torch.float16, device="cuda")
    int8_gemm_into(values, *args, gelu=gelu, config=config, form=form)
    torch.testing.assert_close(values.cpu().float(), reference, rtol=0, atol=5e-3 * float(reference.abs().max()))

    out_scale = float(reference.abs().max()) / 448 * 0.8  # some values saturate
    out_codes = torch.empty(m, n, dtype=torch.float8_e4m3fn, device="cuda")
    int8_gemm_into(out_codes, *args, gelu=gelu, out_scale=out_scale, value_dtype=torch.float16, config=config,
                   form=form)
    expected = e4m3(values.cpu(), out_scale).float()
    got = out_codes.cpu().float()
    if not gelu:
        assert torch.equal(got, expected)
    else:
        off = (got - expected).abs()
        assert float((off > 0).float().mean()) < 0.01
        assert bool((off <= expected.abs() / 8 + 2**-9).all())  # one E4M3 step (3 mantissa bits)


@CUDA
def test_an_fp8_gemm_fed_e4m3_codes_is_the_gemm_fed_their_float_values():
    """The FP8 engine's FC1 → GELU → FC2 hand-over: FC2 reading the E4M3 codes FC1 wrote computes what
    it computes from FC1's FP16 output through its own quantize pass."""
    from helpers.portable.int8_plan import HandoverCodes
    from helpers.portable.kernels.int8_steps import fast_8bit_gemm

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need SM 8.9+")
    x, w1, b1, w2, b2 = fc1_fc2_operands(44)
    x_amax, gelu_amax = float(x.abs().max()), 3.0
    fc1 = fast_8bit_gemm(w1, b1, x_amax, True, False, torch.float16)(x)
    fc1_codes = fast_8bit_gemm(w1, b1, x_amax, True, False, torch.float16,
                               HandoverCodes(torch.float8_e4m3fn, gelu_amax / 448))(x)
    assert fc1_codes.dtype == torch.float8_e4m3fn
    assert torch.equal(fc1_codes.cpu().float(), e4m3(fc1.cpu(), gelu_amax / 448).float())
    fc2 = fast_8bit_gemm(w2, b2, gelu_amax, True, False, torch.float16)
    assert torch.equal(fc2(fc1_codes), fc2(fc1))


# ---------------------------------------------------------------------------------------------
# The lowered plan's hand-overs


def build_imh_iln(work, vocab: str, name: str, *precision: str):
    """A portable ``-imh -iln`` engine of ``work``'s model (builder.py on the CPU), PTQ through
    ``work``'s one calibration cache; ``precision``: ``-i`` or ``--fp8``."""
    import builder

    engine = work / name
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builder, "compute_capability", lambda backend: 90)
        assert builder.main(["--hf", str(work / "hf"), "-o", str(engine), "-b", "4", "-s", str(SEQ), "--backend",
                             "portable", "--device", "cpu", *precision, "-j", str(work / "squad.json"),
                             "-v", vocab, "-n", "4", "-p", str(work / "cache"), "-imh", "-iln"]) == 0
    return engine


@pytest.fixture(scope="module")
def imh_iln_model(tmp_path_factory):
    """(folder, vocabulary, features) of a tiny random BERT and the hand-made SQuAD file."""
    from bench import int8_accuracy as ia
    from tests import checkpoints

    work = tmp_path_factory.mktemp("int8_gemm")
    vocab, features, model = checkpoints.int8_test_model(SEQ)
    model.save_pretrained(work / "hf")
    ia.write_handmade_squad(work / "squad.json")
    return work, vocab, features


@pytest.fixture(scope="module")
def imh_iln_engine(imh_iln_model):
    """A tiny random BERT's PTQ ``-i -imh -iln`` engine (builder.py, portable, built on the CPU)."""
    work, vocab, features = imh_iln_model
    return build_imh_iln(work, vocab, "int8.engine", "-i"), features


@pytest.mark.parametrize("fp8", [False, True])
def test_cuda_plan_hands_over_the_codes_every_reader_takes(imh_iln_engine, fp8):
    """The decision, made on the CPU as the CUDA lowering makes it.  INT8 GEMMs: the QKV GEMM's output
    (read by -imh attention only), the GELU output (read by FC2 only), -imh's context (read by the
    attention output GEMM only), each -iln skip-LayerNorm's GEMM input (the attention output / FC2
    GEMM's output) and its output (read by the next GEMM and the next skip-LayerNorm) as int8 codes;
    the embedding output (written by a float plugin) and the logits stay float.  FP8 GEMMs: E4M3
    codes for what only FP8 GEMMs read (the GELU output, the context, the last skip-LayerNorm's
    output, read by the head), int8 codes into attention and the skip-LayerNorms, and both codes
    for a skip-LayerNorm output that both the next GEMM and the next skip-LayerNorm read."""
    from helpers.portable import int8_plan
    from helpers.portable.engine_file import read_engine
    from helpers.portable.graph import load_graph

    description = read_engine(imh_iln_engine[0].read_bytes())
    graph = load_graph(description)
    lowering = int8_plan.Int8Lowering(graph, torch.device("cpu"), strict=False, fp8=fp8, fast=True)
    lowering.plan_handovers(int8_plan.gelus(graph))
    tensors = description["tensors"]
    names = {tensors[slot]["name"]: how for slot, how in lowering.handover.items()}
    gemm_input = int8_plan.FP8_CODES if fp8 else int8_plan.CODES
    expected = {}
    for layer in range(2):
        expected[f"l{layer}_gelu"] = gemm_input
        expected[f"l{layer}_attention_context_layer"] = gemm_input
        expected[f"l{layer}_attention_qkv_mult"] = int8_plan.CODES
    skip_layernorms = [layer for layer in description["layers"] if layer["kind"] == "plugin"
                       and layer["params"]["plugin"] == "CustomSkipLayerNormPluginDynamic"]
    assert len(skip_layernorms) == 4
    for layer in skip_layernorms:
        expected[tensors[layer["inputs"][0]]["name"]] = int8_plan.CODES
        expected[tensors[layer["outputs"][0]]["name"]] = int8_plan.CODES_AND_FP8_CODES if fp8 else int8_plan.CODES
    expected[tensors[skip_layernorms[-1]["outputs"][0]]["name"]] = gemm_input
    assert {"l0_output_dense", "l1_output_reshape"} <= set(expected)
    assert names == expected


@pytest.mark.parametrize("fp8", [False, True])
def test_only_the_first_qkv_gemm_quantizes_its_input(imh_iln_engine, fp8):
    """Every 8-bit GEMM but the first QKV GEMM (reading the float embedding output) is handed the
    codes it reads, the FP8 engine's QKV and FC1 GEMMs included (the E4M3 copy of the skip-LayerNorm
    output before them): no quantize pass is left in a layer, for INT8 and FP8 GEMMs alike."""
    from helpers.portable import int8_plan
    from helpers.portable.engine_file import read_engine
    from helpers.portable.graph import load_graph

    description = read_engine(imh_iln_engine[0].read_bytes())
    graph = load_graph(description)
    lowering = int8_plan.Int8Lowering(graph, torch.device("cpu"), strict=False, fp8=fp8, fast=True)
    lowering.plan_handovers(int8_plan.gelus(graph))
    read_as = {int8_plan.FP8_CODES, int8_plan.CODES_AND_FP8_CODES} if fp8 else {int8_plan.CODES}
    gemms = [layer.inputs[0] for layer in graph.layers
             if layer.kind == "convolution" and lowering.int8_gemm_source(layer) is not None]
    gemm_inputs = {description["tensors"][slot]["name"]: lowering.handover.get(slot) for slot in gemms}
    assert len(gemm_inputs) == 2 * 4 + 1  # QKV, attention output, FC1, FC2 per layer; the head
    quantized = [name for name, how in gemm_inputs.items() if how not in read_as]
    assert quantized == ["embeddings_output"]


@pytest.fixture(scope="module")
def imh_iln_fp8_engine(imh_iln_model, imh_iln_engine):
    """The same network with FP8 GEMMs (``--fp8`` without ``-i``), calibrated by the INT8 build's cache."""
    work, vocab, features = imh_iln_model
    return build_imh_iln(work, vocab, "fp8.engine", "--fp8"), features


@CUDA
@pytest.mark.parametrize("fp8", [False, True])
def test_hand_overs_leave_the_cuda_engine_results_unchanged(imh_iln_engine, imh_iln_fp8_engine, monkeypatch, fp8):
    """The same engine on CUDA with and without the hand-overs (each producer writing float values and
    each consumer quantizing them): the same arithmetic, so the same logits up to float32 ulps; for
    the INT8 engine and the FP8 one."""
    from bench.int8_accuracy import run_engine
    from helpers.portable import int8_plan

    engine, features = imh_iln_fp8_engine if fp8 else imh_iln_engine
    inputs = features.inputs()
    fused = run_engine(engine, inputs, "cuda", chunk=4)
    monkeypatch.setattr(int8_plan.Int8Lowering, "plan_handovers", lambda self, fused: None)
    separate = run_engine(engine, inputs, "cuda", chunk=4)
    assert np.abs(fused - separate).max() <= 1e-3 * np.abs(separate).max()


@CUDA
def test_the_fp8_engine_gives_the_same_logits_with_the_skip_layernorms_writing_both_codes(imh_iln_fp8_engine,
                                                                                          monkeypatch):
    """The FP8 engine with each -iln output read by the next FP8 GEMM and the next skip-LayerNorm
    handed over in both forms (int8 and E4M3 codes, one pass), and with it handed over as FP16
    values that the GEMM's quantize pass and the skip-LayerNorm quantize: the same codes reach every
    reader, so the logits are the same bit for bit."""
    from bench.int8_accuracy import run_engine
    from helpers.portable import int8_plan

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need SM 8.9+")
    engine, features = imh_iln_fp8_engine
    inputs = features.inputs()
    both = run_engine(engine, inputs, "cuda", chunk=4)
    plan_handovers = int8_plan.Int8Lowering.plan_handovers

    def float_values_instead(self, fused):
        plan_handovers(self, fused)
        both_codes = [slot for slot, how in self.handover.items() if how == int8_plan.CODES_AND_FP8_CODES]
        assert len(both_codes) == 3  # the skip-LayerNorm outputs before layer 0's FC1, layer 1's QKV and FC1
        for slot in both_codes:
            del self.handover[slot]

    monkeypatch.setattr(int8_plan.Int8Lowering, "plan_handovers", float_values_instead)
    values = run_engine(engine, inputs, "cuda", chunk=4)
    assert np.array_equal(both, values)
