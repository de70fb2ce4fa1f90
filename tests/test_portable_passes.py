"""The portable engine's lowering passes and options, on any machine.

What the CUDA plan of each kind of built engine fuses is decided on the typed graph, whatever the
device: the fused-step counts per model are checked here against the network the builders make (a
builder edit that stops a pattern from matching fails here, not silently on the GPU), for the
builder's tanh GELU ("gelu_new") and the exact erf GELU ("gelu") alike, and the 8-bit lowering's
steps on the CPU.  Also: the builder's GELU found whatever the order of the
operands of its commuting layers, plugin fields parsed once, the plan's layer coverage, and
``EngineOptions`` read from the environment.
"""

from __future__ import annotations

import copy
import json

import checkpoints
import numpy as np
import pytest
import torch
from test_builder import FP32_TOLERANCE

from bench import logits_snapshot
from helpers.portable.engine_file import read_engine
from helpers.portable.enums import ElementWiseOperation
from helpers.portable.graph import load_graph
from helpers.portable.int8_plan import Int8Lowering, gelus
from helpers.portable.kernels.patterns import gelu_after
from helpers.portable.kernels.plan import find_matches
from helpers.portable.options import CUBLASLT_ENV, FAST_KERNELS_ENV, FEW_ROWS_ENV, PDL_ENV, EngineOptions, Precision
from helpers.portable.passes import build_plan, reference_plan
from helpers.runner import EngineRunner

LAYERS = 2  # of logits_snapshot's model
FLOAT_FIXED = {"embedding": 1, "attention": LAYERS, "dense": LAYERS + 1, "dense_skip_layernorm": 2 * LAYERS,
               "dense_gelu": LAYERS}
FLOAT_PACKED = {"embedding_varlen": 1, "attention_varlen": LAYERS, "dense": LAYERS + 1,
                "dense_skip_layernorm": 2 * LAYERS, "dense_gelu": LAYERS}
# INT8 engines on CUDA: every GEMM input has a range, so every GEMM is INT8 (FC1 with its GELU);
# the fused float steps take the rest.
INT8_FIXED = {"int8": 3 * LAYERS + 1, "int8_gelu": LAYERS, "embedding": 1, "attention": LAYERS,
              "skip_layernorm": 2 * LAYERS}
EXPECTED = {
    "fixed_fp32": FLOAT_FIXED,
    "fixed_fp16": FLOAT_FIXED,
    "packed_fp32": FLOAT_PACKED,
    "packed_fp16": FLOAT_PACKED,
    "int8": INT8_FIXED,
    "int8_fp16": INT8_FIXED,
    "int8_fp16_strict": INT8_FIXED,
    "fp8_fp16": INT8_FIXED,
    # -imh / -iln: attention and skip-LayerNorm run in INT8 too.
    "int8_fp16_imh_iln": {"int8": 3 * LAYERS + 1 + 3 * LAYERS, "int8_gelu": LAYERS, "embedding": 1},
}


class BuiltEngines:
    """The engines of bench/logits_snapshot.py, each built on first use, of a model whose config
    names ``hidden_act``."""

    def __init__(self, work, hidden_act: str) -> None:
        from bench.int8_accuracy import write_handmade_squad
        from helpers.demo_model import minilm_folder, write_tiny_qa_model

        self.work = work
        self.model = write_tiny_qa_model(work / "hf", seed=17, **logits_snapshot.MODEL_SIZES)
        config_file = self.model / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "hidden_act": hidden_act}))
        self.squad = write_handmade_squad(work / "squad.json")
        self.vocab = str(minilm_folder() / "vocab.txt")
        self.kinds = {name: (script, options) for name, script, options in logits_snapshot.ENGINES}

    def path(self, name: str):
        engine = self.work / f"{name}.engine"
        if not engine.exists():
            script, options = self.kinds[name]
            logits_snapshot.build(script, self.model, engine, options, self.squad, self.vocab,
                                  self.work / "calibration.cache")
        return engine

    def __call__(self, name: str) -> dict:
        return read_engine(self.path(name).read_bytes())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Engines of the builder's tanh GELU, HuggingFace's "gelu_new": the 8-layer chain."""
    return BuiltEngines(tmp_path_factory.mktemp("passes"), "gelu_new")


@pytest.fixture(scope="module")
def built_erf(tmp_path_factory):
    """Engines of the exact erf GELU, HuggingFace's "gelu": one GELU_ERF activation layer."""
    return BuiltEngines(tmp_path_factory.mktemp("passes_erf"), "gelu")


def cuda_patterns(graph) -> dict[str, int]:
    """The steps a CUDA engine's passes place, by pattern, decided without building any kernel."""
    precision = Precision.from_flags(graph.flags)
    counts: dict[str, int] = {}
    taken: set[int] = set()
    if precision.quantized:
        lowering = Int8Lowering(graph, torch.device("cpu"), precision.strict, precision.fp8, fast=True)
        fused = gelus(graph)
        lowering.plan_handovers(fused)
        for layer in graph.layers:
            covered = None if layer.index in taken or layer.kind == "constant" else lowering.covered(layer, fused)
            if covered is not None:
                taken.update(member.index for member in covered)
                pattern = "int8_gelu" if len(covered) > 1 else "int8"
                counts[pattern] = counts.get(pattern, 0) + 1
    for match in find_matches(graph, lambda layer: layer.index in taken):
        counts[match.pattern] = counts.get(match.pattern, 0) + 1
    return counts


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_engine_kind_fuses_what_its_network_holds(built, name):
    assert cuda_patterns(load_graph(built(name))) == EXPECTED[name]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_erf_gelu_fuses_where_the_tanh_gelu_does(built_erf, name):
    """Same steps as the tanh engines: FC1 + its one GELU_ERF layer are one dense_gelu (or 8-bit GEMM) step."""
    graph = load_graph(built_erf(name))
    assert cuda_patterns(graph) == EXPECTED[name]
    assert [(gelu.form, len(gelu.layers)) for gelu in gelus(graph).values()] == [("erf", 1)] * LAYERS
    assert [match.gelu_form for match in find_matches(graph) if match.pattern == "dense_gelu"] == ["erf"] * LAYERS


def test_an_erf_gelu_whose_input_is_read_elsewhere_is_not_fused(built_erf):
    """FC1's output also an engine output: the GEMM must write it, so the GELU stays a layer of its own."""
    description = copy.deepcopy(built_erf("fixed_fp16"))
    graph = load_graph(description)
    fc1_outputs = [conv.outputs[0] for conv in graph.layers if gelu_after(graph, conv) is not None]
    assert len(fc1_outputs) == LAYERS
    description["outputs"] = [*description["outputs"], fc1_outputs[0]]
    patterns = cuda_patterns(load_graph(description))
    assert patterns["dense_gelu"] == LAYERS - 1 and patterns["dense"] == FLOAT_FIXED["dense"] + 1


@pytest.mark.parametrize("name", ["fixed_fp32", "packed_fp32"])
def test_cpu_plan_of_an_erf_engine_fuses_nothing_and_matches_hf(built_erf, name):
    """The CPU runs the GELU_ERF layer itself: HuggingFace's exact GELU, to FP32 accuracy."""
    from transformers import BertForQuestionAnswering

    graph = load_graph(built_erf(name))
    assert build_plan(graph, torch.device("cpu"), EngineOptions()).patterns() == {}
    model = BertForQuestionAnswering.from_pretrained(str(built_erf.model)).eval()
    assert model.config.hidden_act == "gelu"
    runner = EngineRunner(built_erf.path(name), device="cpu")
    vocab = model.config.vocab_size
    if name == "fixed_fp32":
        inputs = checkpoints.random_inputs(logits_snapshot.BATCH, logits_snapshot.SEQ, vocab, seed=5)
        runner.activate(logits_snapshot.BATCH, logits_snapshot.SEQ)
        got = runner.infer(inputs).reshape(logits_snapshot.BATCH, logits_snapshot.SEQ, 2)
        expected = checkpoints.hf_logits(model, inputs)
    else:
        lengths = [logits_snapshot.SEQ, 77, 5, 100]
        batch = checkpoints.packed_batch(lengths, vocab, seed=5)
        runner.activate(len(lengths), logits_snapshot.SEQ, total_tokens=sum(lengths))
        got = runner.infer(batch).reshape(2, -1)
        expected = checkpoints.hf_packed_logits(model, batch)
    assert float(np.abs(got - expected).max()) <= FP32_TOLERANCE


@pytest.mark.parametrize("fixture", ["built", "built_erf"])
@pytest.mark.parametrize("name", ["int8", "int8_fp16_imh_iln", "fp8_fp16"])
def test_cpu_plan_of_a_quantized_engine_lowers_its_8_bit_layers(request, fixture, name):
    graph = load_graph(request.getfixturevalue(fixture)(name))
    patterns = build_plan(graph, torch.device("cpu"), EngineOptions()).patterns()
    gemm = "fp8_gemm" if name.startswith("fp8") else "int8_gemm"
    expected = {gemm: 4 * LAYERS + 1}  # QKV, attention output, FC1, FC2; the head (no GELU fused on the CPU)
    if name == "int8_fp16_imh_iln":
        expected.update(int8_attention=LAYERS, int8_skip_layernorm=2 * LAYERS)
    assert patterns == expected
    # A float engine's CPU plan is its reference plan; the reference plan never quantizes.
    assert reference_plan(graph, torch.device("cpu")).patterns() == {}


def test_every_layer_is_lowered_once_with_plugins_parsed_at_load(built):
    description = built("fixed_fp16")
    graph = load_graph(description)
    plugins = [layer for layer in graph.layers if layer.plugin is not None]
    assert len(plugins) == 1 + 2 * LAYERS + LAYERS  # embedding, skip-LayerNorms, attention
    assert all(layer.plugin.params["instance"] == layer.params["instance"] for layer in plugins)
    plan = build_plan(graph, torch.device("cpu"), EngineOptions())
    computing = [layer for layer in graph.layers if layer.kind != "constant"]
    assert [step.name for step in plan.steps] == [layer.name for layer in computing]
    assert set(plan.constants) == {layer.outputs[0] for layer in graph.layers if layer.kind == "constant"}


def _swap_commuting_operands(description: dict) -> int:
    """Swap the two inputs of every SUM / PROD layer; returns how many there were."""
    swapped = 0
    for layer in description["layers"]:
        if layer["kind"] == "elementwise" and layer["params"]["op"] in (int(ElementWiseOperation.SUM),
                                                                        int(ElementWiseOperation.PROD)):
            layer["inputs"] = layer["inputs"][::-1]
            swapped += 1
    return swapped


@pytest.mark.parametrize("name", ["fixed_fp16", "packed_fp32"])
def test_gelu_chain_is_found_whatever_the_order_of_commuting_operands(built, name):
    description = copy.deepcopy(built(name))
    assert _swap_commuting_operands(description) == 6 * LAYERS
    graph = load_graph(description)
    convolutions = [layer for layer in graph.layers if layer.kind == "convolution"]
    assert [gelu.form for conv in convolutions if (gelu := gelu_after(graph, conv)) is not None] == ["tanh"] * LAYERS


def test_a_changed_gelu_is_not_fused(built):
    """A chain with another constant (not the tanh GELU any more) is left to the reference steps."""
    description = copy.deepcopy(built("fixed_fp16"))
    for layer in description["layers"]:
        if layer["kind"] == "constant" and layer["params"]["values"].size == 1 and \
                abs(float(layer["params"]["values"].ravel()[0]) - 0.044715) < 1e-7:
            layer["params"] = {**layer["params"], "values": layer["params"]["values"] * 2}
    patterns = cuda_patterns(load_graph(description))
    assert "dense_gelu" not in patterns and patterns["dense"] == FLOAT_FIXED["dense"] + LAYERS


def test_engine_options_read_the_environment_once(monkeypatch):
    for name in (FAST_KERNELS_ENV, CUBLASLT_ENV, FEW_ROWS_ENV, PDL_ENV):
        monkeypatch.delenv(name, raising=False)
    assert EngineOptions.from_environment() == EngineOptions()
    monkeypatch.setenv(CUBLASLT_ENV, "0")
    monkeypatch.setenv(PDL_ENV, "0")
    options = EngineOptions.from_environment()
    assert (options.fast_kernels, options.cublaslt, options.few_rows_gemm, options.pdl) == (True, False, True, False)
    assert EngineOptions.from_environment({FAST_KERNELS_ENV: "0"}).fast_kernels is False
    described = options.for_flags(["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]).describe()
    assert described == ["precision: FP16 + INT8 (strict types)", "fast kernels: on (DEMOBERT_FAST_KERNELS=1)",
                         "cuBLASLt GEMMs: off (DEMOBERT_CUBLASLT=0)", "few-rows GEMM: on (DEMOBERT_FEW_ROWS_GEMM=1)",
                         "PDL launches: off (DEMOBERT_PDL=0)"]


def test_an_engine_keeps_the_options_it_was_loaded_with(built, monkeypatch):
    import helpers.portable as trt

    data = built.path("int8_fp16").read_bytes()
    flags = built("int8_fp16")["build"]["flags"]
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    runtime.engine_options = EngineOptions(pdl=False)
    monkeypatch.setenv(CUBLASLT_ENV, "0")  # not read: the runtime's options win
    engine = runtime.deserialize_cuda_engine(data)
    assert engine.options == EngineOptions(pdl=False).for_flags(flags)
    assert engine.options.precision == Precision(fp16=True, int8=True)
    runtime.engine_options = None
    assert runtime.deserialize_cuda_engine(data).options.cublaslt is False


def test_perf_verbose_and_doctor_print_the_options(tmp_path_factory, capsys, monkeypatch):
    import perf
    from engines import SEQ_LEN, run_main, tiny_engine
    from helpers import doctor

    monkeypatch.setenv(FEW_ROWS_ENV, "0")
    engine = tiny_engine(tmp_path_factory)
    status, out, err = run_main(perf.main, ["-e", str(engine), "-s", str(SEQ_LEN), "-i", "1", "-w", "0", "--device", "cpu",
                                            "--verbose"], capsys)
    assert status == 0, err
    assert out.startswith("Engine: portable, on cpu\n  precision: FP32\n  fast kernels: on (DEMOBERT_FAST_KERNELS=1)\n")
    assert "  few-rows GEMM: off (DEMOBERT_FEW_ROWS_GEMM=0)\n" in out
    report = doctor.report(doctor.inspect_machine())
    assert report.endswith("\n".join(f"  {line}" for line in EngineOptions.from_environment().switches()))
    assert "few-rows GEMM: off (DEMOBERT_FEW_ROWS_GEMM=0)" in report
