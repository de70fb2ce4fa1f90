"""The fast CUDA kernels (helpers.portable.kernels) against the reference math (helpers.portable.ops;
PyTorch's exact GELU for the erf form).

Random inputs of awkward sizes, FP16 and FP32; every output element is compared.  GPU only:
skipped on machines without CUDA (the kernels need Triton and CUDA backends of SDPA).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers.portable import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the fast kernels need a CUDA GPU")

DTYPES = [torch.float16, torch.float32]
GELU_FORMS = ["tanh", "erf"]
# (hidden E, heads N): head sizes 8, 16, 64 and one that no fused attention kernel takes (20).
WIDTHS = [(40, 5), (48, 3), (1024, 16), (40, 2)]
SHAPES = [(7, 3), (37, 1), (128, 3), (384, 1)]  # (S, B)


def tolerance(dtype: torch.dtype) -> dict:
    return {"atol": 1e-2, "rtol": 1e-2} if dtype == torch.float16 else {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(autouse=True)
def fresh_seed(request):
    torch.manual_seed(hash(request.node.name) % 2**31)


@pytest.fixture(scope="module")
def kernels():
    from helpers.portable import kernels as module

    return module


def layernorm_params(hidden: int):
    return torch.rand(hidden, device="cuda") + 0.5, torch.randn(hidden, device="cuda")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [40, 48, 768, 1024])
@pytest.mark.parametrize("seq,batch", SHAPES)
def test_embed_layernorm_matches_reference(kernels, dtype, hidden, seq, batch):
    vocab, types, max_pos = 101, 2, 512
    ids = torch.randint(0, vocab, (seq, batch), dtype=torch.int32, device="cuda")
    ids[0, 0], ids[-1, -1] = -1, vocab  # out-of-range tokens come out as zeros
    segs = torch.randint(0, types, (seq, batch), dtype=torch.int32, device="cuda")
    pos = torch.arange(seq, dtype=torch.int32, device="cuda").unsqueeze(1).expand(seq, batch)
    tables = [torch.randn(n, hidden, device="cuda").to(dtype) for n in (vocab, types, max_pos)]
    gamma, beta = layernorm_params(hidden)
    expected = ops.embed_layernorm(ids, segs, pos, *tables, gamma, beta)
    got = kernels.embed_layernorm(ids, segs, pos, *tables, gamma, beta)
    for e, g in zip(expected, got):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, **tolerance(dtype))
    assert got[0][0, 0].abs().max() == 0 and got[1][-1, -1].abs().max() == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [40, 48, 768, 1024])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("eps", [0.0, 2.0**-10])
def test_skip_layernorm_matches_reference(kernels, dtype, hidden, with_bias, eps):
    x = torch.randn(37, 3, hidden, device="cuda").to(dtype)
    skip = torch.randn_like(x)
    gamma, beta = layernorm_params(hidden)
    bias = torch.randn(hidden, device="cuda").to(dtype) if with_bias else None
    expected = ops.skip_layernorm(x, skip, gamma, beta, bias, eps)
    got = kernels.skip_layernorm(x, skip, gamma, beta, bias, eps)
    for e, g in zip(expected, got):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, **tolerance(dtype))


def reference_gelu(y: torch.Tensor, form: str) -> torch.Tensor:
    """The GELU of ``form`` computed in float32, in ``y``'s dtype."""
    return ops.gelu_tanh(y) if form == "tanh" else F.gelu(y.float()).to(y.dtype)


def gelu_tolerance(dtype: torch.dtype, form: str) -> dict:
    """FP32: far below |erf GELU - tanh GELU| (up to 5e-4, at y ≈ -2.7).  FP16, erf form: the FP16
    roundings of the GEMM's result and of the GELU's only, below that difference where the GELU is
    small, so both pin the form."""
    if dtype == torch.float32:
        return {"atol": 1e-5, "rtol": 1e-5}
    return {"atol": 1e-4, "rtol": 2e-3} if form == "erf" else tolerance(dtype)


@pytest.mark.parametrize("form", GELU_FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", [1, 37 * 3 * 40, 128 * 4096 + 5])
def test_gelu_matches_reference(kernels, dtype, numel, form):
    x = (4 * torch.randn(numel, device="cuda")).to(dtype)
    x[0] = -30.0  # the GELU vanishes: the result must be exactly 0, not NaN
    got = kernels.elementwise_gelu(x, form)
    assert got[0] == 0
    torch.testing.assert_close(got, reference_gelu(x, form), **gelu_tolerance(dtype, form))


@pytest.mark.parametrize("form", GELU_FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,channels", [(1, 7), (37, 3072), (1000, 129)])
def test_bias_gelu_pass_in_place(dtype, rows, channels, form):
    """The pass after a GEMM whose epilogue has no GELU of this form: ``out`` is its input."""
    from helpers.portable.kernels.gelu import bias_gelu_into

    x = (4 * torch.randn(rows, channels, device="cuda")).to(dtype)
    bias = torch.randn(channels, device="cuda").to(dtype)
    expected = reference_gelu(x.float() + bias.float(), form).to(dtype)  # the sum in float32, as the pass makes it
    bias_gelu_into(x, x, bias, form)
    torch.testing.assert_close(x, expected, **gelu_tolerance(dtype, form))


GEMM_PATHS = ["few_rows", "cublaslt", "torch", "sparse"]


@pytest.mark.parametrize("path", GEMM_PATHS)
@pytest.mark.parametrize("form", GELU_FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 97, 200), (111, 192, 64), (300, 1000, 136)])
def test_gemm_step_applies_the_gelu_of_its_form(dtype, m, n, k, form, path):
    """``steps.Gemm`` on each of its paths (the few-rows Triton GEMM's epilogue; cuBLASLt, whose GELU
    epilogue is the tanh form; PyTorch's call; the 2:4 sparse GEMM) against float64 math."""
    from helpers.portable.kernels import steps
    from helpers.portable.kernels.pdl import CHAIN_MAX_ROWS
    from helpers.sparsity import prune_2to4

    if path in ("few_rows", "sparse") and dtype != torch.float16:
        pytest.skip("the few-rows and sparse GEMMs take FP16 weights only")
    if path == "few_rows" and m > CHAIN_MAX_ROWS:
        pytest.skip("the few-rows GEMM takes batch-1 row counts only")
    rows = torch.randn(m, k, device="cuda").to(dtype)
    weight = (torch.randn(n, k, device="cuda") / math.sqrt(k)).to(dtype)
    sparse = None
    if path == "sparse":
        weight = prune_2to4(weight)
        sparse = steps.sparse_weight(weight)
        if sparse is None:
            pytest.skip("PyTorch's semi-structured sparse GEMM does not take this weight here")
    bias = torch.randn(n, device="cuda").to(dtype)
    gemm = steps.Gemm(weight, sparse, cublaslt=path != "torch", few_rows=path == "few_rows")
    assert gemm.takes_few_rows(rows) == (path == "few_rows")
    got = gemm(rows, bias, gelu=True, form=form)
    assert got.shape == (m, n) and got.dtype == dtype and got.is_contiguous()
    product = rows.double() @ weight.double().t()
    if path == "sparse":
        # The sparse GEMM writes the product in FP16 before the bias + GELU pass adds the bias.
        product = product.to(dtype).double()
    expected = F.gelu(product + bias.double(), approximate="tanh" if form == "tanh" else "none")
    torch.testing.assert_close(got.double(), expected, **gelu_tolerance(dtype, form))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden,inter", [(40, 160), (48, 192), (1024, 4096)])
@pytest.mark.parametrize("seq,batch", [(7, 3), (128, 3)])
def test_linear_gelu_is_the_tanh_gelu_of_the_linear(kernels, dtype, hidden, inter, seq, batch):
    x = torch.randn(seq, batch, hidden, device="cuda").to(dtype)
    weight = (torch.randn(inter, hidden, device="cuda") / math.sqrt(hidden)).to(dtype)
    bias = torch.randn(inter, device="cuda").to(dtype)
    expected = ops.gelu_tanh(ops.linear(x, weight, bias))
    got = kernels.linear_gelu(x, weight, bias)
    assert got.shape == expected.shape
    # FP32 tolerance is far below |erf GELU - tanh GELU| (up to 5e-4), so it pins the tanh form.
    torch.testing.assert_close(got, expected, **({"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32
                                                 else tolerance(dtype)))


def packed_qkv(seq: int, batch: int, hidden: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(seq, batch, 3 * hidden, device="cuda").to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden,heads", WIDTHS)
@pytest.mark.parametrize("seq,batch", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_attention_fixed_matches_reference(kernels, dtype, hidden, heads, seq, batch, masked):
    qkv = packed_qkv(seq, batch, hidden, dtype)
    mask_idx = torch.randint(1, seq + 1, (batch,), dtype=torch.int32, device="cuda") if masked else None
    expected = ops.attention_fixed(qkv, mask_idx, heads)
    got = kernels.attention_fixed(qkv, mask_idx, heads)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden,heads", [(40, 5), (48, 3), (1024, 16)])
@pytest.mark.parametrize("lengths", [[7], [37, 1, 128], [384, 5, 64, 200]])
@pytest.mark.parametrize("give_max", [False, True])
def test_attention_varlen_matches_reference(kernels, dtype, hidden, heads, lengths, give_max):
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    qkv = torch.randn(int(cu_seqlens[-1]), 3 * hidden, device="cuda").to(dtype)
    expected = ops.attention_varlen(qkv, cu_seqlens, heads)
    max_seqlen = 384 if give_max else None  # any upper bound of the lengths
    got = kernels.attention_varlen(qkv, cu_seqlens, heads, max_seqlen)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, **tolerance(dtype))


@pytest.mark.parametrize("hidden", [48, 1024])
@pytest.mark.parametrize("seq,batch", [(7, 3), (384, 2)])
def test_embedding_reads_transposed_ids_with_positions_from_the_sequence_axis(hidden, seq, batch):
    from helpers.portable.kernels.norms import embed_layernorm_into

    ids_bs = torch.randint(0, 101, (batch, seq), dtype=torch.int32, device="cuda")
    segs_bs = torch.randint(0, 2, (batch, seq), dtype=torch.int32, device="cuda")
    tables = [torch.randn(n, hidden, device="cuda").half() for n in (101, 2, 512)]
    gamma, beta = layernorm_params(hidden)
    out = torch.full((seq, batch, hidden), float("nan"), dtype=torch.float16, device="cuda")
    embed_layernorm_into(out, None, ids_bs.t(), segs_bs.t(), None, *tables, gamma, beta)
    positions = torch.arange(seq, device="cuda").unsqueeze(1).expand(seq, batch)
    expected, _ = ops.embed_layernorm(ids_bs.t(), segs_bs.t(), positions, *tables, gamma, beta)
    torch.testing.assert_close(out, expected, **tolerance(torch.float16))


@pytest.mark.parametrize("seq,batch", [(7, 3), (128, 1), (384, 5)])
def test_mask_index_and_key_bias_match_reference(seq, batch):
    from helpers.portable.kernels.attention import key_padding_bias
    from helpers.portable.kernels.norms import mask_index_and_bias_into

    mask_bs = torch.ones(batch, seq, dtype=torch.int32, device="cuda")
    for b, valid in enumerate(torch.randint(0, seq + 1, (batch,)).tolist()):
        mask_bs[b, valid:] = 0
    mask_bs[0, :] = 1
    index = torch.full((batch,), -7, dtype=torch.int32, device="cuda")
    bias = torch.full((batch, 1, 1, seq), 3.0, dtype=torch.float16, device="cuda")
    mask_index_and_bias_into(index, bias, mask_bs.t())
    expected_index = ops.mask_index(mask_bs.t())
    assert torch.equal(index, expected_index)
    assert torch.equal(bias, key_padding_bias(expected_index, seq, torch.float16))


# The GELU of the tiny models: the builder's tanh chain, or one GELU_ERF layer (the exact form).
HIDDEN_ACTS = ["gelu_pytorch_tanh", "gelu"]


def save_tiny_model(folder, max_positions: int = 128, pruned: bool = False,
                    hidden_act: str = "gelu_pytorch_tanh") -> None:
    """A random 2-layer BERT QA model (E = 64, 4 heads); ``pruned``: encoder kernels pruned to 2:4."""
    from transformers import BertConfig, BertForQuestionAnswering

    from helpers.sparsity import is_prunable_name, prune_2to4

    config = BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=max_positions, hidden_act=hidden_act)
    model = BertForQuestionAnswering(config)
    if pruned:
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if is_prunable_name(name):
                    weight.copy_(prune_2to4(weight))
    model.save_pretrained(folder)


def build_tiny_engine(folder, fp16: bool, batch: int, seq: int, hidden_act: str = "gelu_pytorch_tanh") -> bytes:
    import builder

    save_tiny_model(folder, hidden_act=hidden_act)
    path = folder / "tiny.engine"
    argv = ["--hf", str(folder), "-o", str(path), "-b", str(batch), "-s", str(seq), "--backend", "portable",
            "--device", "cuda"] + (["--fp16"] if fp16 else [])
    assert builder.main(argv) == 0
    return path.read_bytes()


def run_plan(plan, description, inputs):
    from helpers.portable.graph import execute

    buffers = [None] * plan.num_slots
    for slot, value in plan.constants.items():
        buffers[slot] = value
    for slot, value in zip(description["inputs"], inputs):
        buffers[slot] = value
    execute(plan, buffers)
    return buffers[description["outputs"][0]].float()


def reference_and_fast_plans(description, dev, options=None, logger=None):
    """The engine description's reference plan and its plan as an engine on ``dev`` builds it."""
    from helpers.portable.graph import load_graph
    from helpers.portable.options import EngineOptions
    from helpers.portable.passes import build_plan, reference_plan

    graph = load_graph(description)
    return reference_plan(graph, dev), build_plan(graph, dev, options or EngineOptions(), logger)


@pytest.mark.parametrize("hidden_act", HIDDEN_ACTS)
@pytest.mark.parametrize("fp16", [False, True])
def test_fast_plan_matches_reference_plan_of_a_built_engine(tmp_path, fp16, hidden_act):
    from helpers.portable.engine_file import read_engine
    from helpers.portable.lowering import RELEASE_STEP

    batch, seq = 3, 37  # 111 rows: FP16 GEMMs on the few-rows GEMM
    description = read_engine(build_tiny_engine(tmp_path, fp16, batch, seq, hidden_act))
    dev = torch.device("cuda")
    reference, fast = reference_and_fast_plans(description, dev)
    # Per layer: QKV GEMM, attention, GEMM+skipLN, GEMM+GELU, GEMM+skipLN; plus the embedding,
    # the head GEMM and the four shuffles.
    computing = [step for step in fast.steps if step.name != RELEASE_STEP]
    assert len(computing) == 2 * 5 + 1 + 1 + 4 < len(reference.steps)
    assert fast.patterns() == {"embedding": 1, "dense": 2 + 1, "attention": 2, "dense_skip_layernorm": 2 * 2,
                               "dense_gelu": 2}
    mask = torch.ones(batch, seq, dtype=torch.int32, device="cuda")
    mask[1, 20:], mask[2, 1:] = 0, 0
    inputs = (torch.randint(0, 97, (batch, seq), dtype=torch.int32, device="cuda"),
              torch.randint(0, 2, (batch, seq), dtype=torch.int32, device="cuda"), mask)
    expected = run_plan(reference, description, inputs)
    got = run_plan(fast, description, inputs)
    torch.testing.assert_close(got, expected, **({"atol": 2e-2, "rtol": 2e-2} if fp16 else tolerance(torch.float32)))


def test_fast_kernels_can_be_switched_off(tmp_path, monkeypatch):
    from helpers.portable.engine_file import read_engine
    from helpers.portable.options import FAST_KERNELS_ENV, EngineOptions

    description = read_engine(build_tiny_engine(tmp_path, True, 2, 16))
    monkeypatch.setenv(FAST_KERNELS_ENV, "0")
    reference, plan = reference_and_fast_plans(description, torch.device("cuda"), EngineOptions.from_environment())
    assert [step.name for step in plan.steps] == [step.name for step in reference.steps]
    assert plan.patterns() == {}


# ---- the packed (variable-length) network

PACKED_LENGTHS = [1, 2, 17, 64, 129, 384, 512]  # one sequence of each; the engine's longest is 512
PACKED_MAX_SEQ = 512


def packed_inputs(lengths: list[int], vocab: int = 97) -> tuple[torch.Tensor, ...]:
    tokens = sum(lengths)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    return (torch.randint(0, vocab, (tokens,), dtype=torch.int32, device="cuda"),
            torch.randint(0, 2, (tokens,), dtype=torch.int32, device="cuda"), cu_seqlens,
            torch.zeros(PACKED_MAX_SEQ, dtype=torch.int32, device="cuda"))


def build_tiny_packed_engine(folder, fp16: bool, *extra: str, name: str = "packed",
                             hidden_act: str = "gelu_pytorch_tanh") -> dict:
    """A packed engine of the model in ``folder`` (saved there first if there is none)."""
    import builder_varseqlen
    from helpers.portable.engine_file import read_engine

    if not (folder / "config.json").exists():
        save_tiny_model(folder, max_positions=PACKED_MAX_SEQ, hidden_act=hidden_act)
    path = folder / f"{name}.engine"
    argv = ["--hf", str(folder), "-o", str(path), "-b", str(len(PACKED_LENGTHS)), "-s", str(PACKED_MAX_SEQ),
            "--backend", "portable", "--device", "cuda", *(["--fp16"] if fp16 else []), *extra]
    assert builder_varseqlen.main(argv) == 0
    return read_engine(path.read_bytes())


class RecordingLogger:
    def __init__(self) -> None:
        self.messages: list[tuple[object, str]] = []

    def log(self, severity, msg: str) -> None:
        self.messages.append((severity, msg))


@pytest.mark.parametrize("hidden_act", HIDDEN_ACTS)
@pytest.mark.parametrize("fp16", [False, True])
def test_fast_plan_matches_reference_plan_of_a_packed_engine(tmp_path, fp16, hidden_act):
    description = build_tiny_packed_engine(tmp_path, fp16, hidden_act=hidden_act)  # 1109 rows: cuBLASLt GEMMs
    dev = torch.device("cuda")
    reference, fast = reference_and_fast_plans(description, dev)
    # Every plugin, GEMM and GELU layer has a fast step; only shuffles keep their reference steps.
    kinds = {layer["name"]: layer["kind"] for layer in description["layers"]}
    left = {kinds[step.name] for step in fast.steps if step.name in kinds}
    assert left <= {"shuffle"}, left
    inputs = packed_inputs(PACKED_LENGTHS)
    expected = run_plan(reference, description, inputs)
    got = run_plan(fast, description, inputs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, **({"atol": 2e-2, "rtol": 2e-2} if fp16 else tolerance(torch.float32)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden,heads", [(48, 3), (1024, 16)])
def test_packed_attention_step_matches_the_plugin(dtype, hidden, heads):
    from helpers.portable import plugins
    from helpers.portable.kernels.steps import attention_varlen_step

    _, _, cu_seqlens, max_seqlen = packed_inputs(PACKED_LENGTHS)
    qkv = torch.randn(sum(PACKED_LENGTHS), 3 * hidden, 1, 1, device="cuda").to(dtype)
    params = {"var_seqlen": 1, "num_heads": heads, "has_mask": 0}
    mask = torch.zeros((), dtype=torch.int32, device="cuda")
    (expected,) = plugins.qkv_to_context_varseqlen(params, {}, qkv, mask, cu_seqlens, max_seqlen)
    (got,) = attention_varlen_step(heads, dtype)(qkv, cu_seqlens, max_seqlen)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, **tolerance(dtype))


@pytest.mark.parametrize("megatron", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [40, 1024])
def test_packed_embedding_step_matches_the_plugin(megatron, dtype, hidden):
    from helpers.portable import plugins
    from helpers.portable.kernels.steps import embedding_varlen_step

    ids, segs, cu_seqlens, max_seqlen = packed_inputs(PACKED_LENGTHS)
    ids = torch.cat([ids, torch.tensor([5, 6, 7], dtype=torch.int32, device="cuda")])  # 3 tokens past the last sequence
    segs = torch.cat([segs, torch.ones(3, dtype=torch.int32, device="cuda")])
    ids[0], ids[100] = -1, 97  # out-of-range ids embed as zeros
    tables = [torch.randn(n, hidden, device="cuda").to(dtype) for n in (97, 2, PACKED_MAX_SEQ)]
    gamma, beta = layernorm_params(hidden)
    weights = dict(zip(("bert_embeddings_word_embeddings", "bert_embeddings_token_type_embeddings",
                        "bert_embeddings_position_embeddings", "bert_embeddings_layernorm_gamma",
                        "bert_embeddings_layernorm_beta"), (*tables, gamma, beta)))
    expected = plugins.emb_layernorm_varseqlen(megatron)({}, weights, ids, segs, cu_seqlens, max_seqlen)
    got = embedding_varlen_step(tables, gamma, beta, megatron)(ids, segs, cu_seqlens, max_seqlen)
    for e, g in zip(expected, got):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, **tolerance(dtype))
    assert got[0][-3:].abs().max() == 0 and got[0][0].abs().max() == 0


def test_packed_positions_count_from_each_sequence_start():
    from helpers.portable.kernels.steps import packed_positions

    cu_seqlens = torch.tensor([0, 1, 1, 4, 6], dtype=torch.int32, device="cuda")
    expected = [0, 0, 1, 2, 0, 1, -1, -1]  # an empty third sequence; two tokens past the last one
    assert packed_positions(cu_seqlens, 8).tolist() == expected


def graph_replay(plan, description, inputs) -> torch.Tensor:
    """The plan's first output from a CUDA graph capture of one run, replayed on the inputs."""
    from helpers.portable.graph import execute

    buffers = [None] * plan.num_slots
    for slot, value in plan.constants.items():
        buffers[slot] = value
    for slot, value in zip(description["inputs"], inputs):
        buffers[slot] = value
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        execute(plan, list(buffers))  # warm-up: Triton compiles, cuBLAS / cuSPARSELt set up
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        execute(plan, buffers)
    graph.replay()
    torch.cuda.synchronize()
    return buffers[description["outputs"][0]].float()


@pytest.mark.parametrize("hidden_act", HIDDEN_ACTS)
def test_sparse_weights_run_sparse_gemms_with_the_dense_logits(tmp_path, hidden_act):
    from helpers.portable.enums import Severity

    dev = torch.device("cuda")
    save_tiny_model(tmp_path, max_positions=PACKED_MAX_SEQ, pruned=True, hidden_act=hidden_act)
    dense = build_tiny_packed_engine(tmp_path, True, name="dense")
    sparse = build_tiny_packed_engine(tmp_path, True, "-sp", name="sparse")
    assert "SPARSE_WEIGHTS" in sparse["build"]["flags"] and "SPARSE_WEIGHTS" not in dense["build"]["flags"]
    logger = RecordingLogger()
    _, sparse_plan = reference_and_fast_plans(sparse, dev, logger=logger)
    _, dense_plan = reference_and_fast_plans(dense, dev, logger=logger)
    went_sparse = {msg.rsplit(" ", 1)[-1] for severity, msg in logger.messages
                   if severity == Severity.INFO and "sparse GEMM:" in msg}
    # The pruned encoder GEMMs of both layers; the SQuAD head is not 2:4 and stays dense.
    kernels = ("attention_qkv", "attention_output_dense", "intermediate_dense", "output_dense")
    assert went_sparse == {f"l{i}_{k}" for i in range(2) for k in kernels}, logger.messages
    inputs = packed_inputs(PACKED_LENGTHS)
    expected = run_plan(dense_plan, dense, inputs)
    torch.testing.assert_close(run_plan(sparse_plan, sparse, inputs), expected, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(graph_replay(sparse_plan, sparse, inputs), expected, atol=2e-2, rtol=2e-2)


def test_packed_fast_plan_runs_in_a_cuda_graph(tmp_path):
    description = build_tiny_packed_engine(tmp_path, True)
    dev = torch.device("cuda")
    _, plan = reference_and_fast_plans(description, dev)
    inputs = packed_inputs(PACKED_LENGTHS)
    torch.testing.assert_close(graph_replay(plan, description, inputs), run_plan(plan, description, inputs))
