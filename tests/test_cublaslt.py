"""The tuned cuBLASLt GEMMs (helpers.portable.kernels.cublaslt) against PyTorch's GEMMs.

CPU: the bucketing, the switch, finding and failing to find the library, the binding's constants
against an installed cublasLt.h (where there is one), and the PyTorch fallback (with the GELU of
either form).  CUDA: tuned
GEMMs of awkward sizes in all three epilogues, a bucket's algorithm on the other M of its bucket,
graph capture and replay, and an engine's logits with and without cuBLASLt.
"""

from __future__ import annotations

import glob
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

from helpers.portable.kernels import cublaslt

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="cuBLASLt needs a CUDA GPU")
FP16_TOLERANCE = {"atol": 1e-2, "rtol": 1e-2}


def oracle(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool,
           form: str = "tanh") -> torch.Tensor:
    """The GEMM in float64 from the same (FP16) values, then the GELU of ``form``."""
    y = rows.double() @ weight.double().t()
    if bias is not None:
        y = y + bias.double()
    return F.gelu(y, approximate="tanh" if form == "tanh" else "none") if gelu else y


# ---- pure logic

def test_m_bucket_rounds_up_by_at_most_a_quarter():
    buckets = set()
    for m in range(1, 70000):
        bucket = cublaslt.m_bucket(m)
        assert bucket == m if m <= 8 else m <= bucket <= 1.25 * m
        assert cublaslt.m_bucket(bucket) == bucket
        buckets.add(bucket)
    assert len(buckets) <= 8 + 4 * 14  # four per octave above 8
    assert [cublaslt.m_bucket(m) for m in (9, 129, 1000, 3000)] == [10, 160, 1024, 3072]
    # BERT's fixed shapes (S × B = 128, 384, 128 × 128, 384 × 128) are tuned at their own M.
    assert [cublaslt.m_bucket(m) for m in (128, 384, 16384, 49152)] == [128, 384, 16384, 49152]


def test_mapped_library_is_found_in_a_maps_listing():
    maps = ("7f00-7f10 r--p 00000000 08:01 42  /usr/lib/libc.so.6\n"
            "7f20-7f30 r-xp 00000000 08:01 43  /env/nvidia/cu13/lib/libcublasLt.so.13\n"
            "7f40-7f50 rw-p 00000000 00:00 0 \n"
            "7f60-7f70 r-xp 00000000 08:01 44  /env/nvidia/cu13/lib/libcublas.so.13\n")
    assert cublaslt.mapped_library(maps) == "/env/nvidia/cu13/lib/libcublasLt.so.13"
    assert cublaslt.mapped_library(maps.replace("libcublasLt", "libother")) is None


@pytest.fixture
def reload_library():
    cublaslt.load_library.cache_clear()
    yield
    cublaslt.load_library.cache_clear()


@pytest.mark.parametrize("path", [None, "/nonexistent/libcublasLt.so.13"])
def test_missing_library_switches_cublaslt_off(monkeypatch, reload_library, path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cublaslt, "library_path", lambda: path)
    assert cublaslt.load_library() is None
    assert not cublaslt.available(torch.device("cuda"))


def test_environment_switch(monkeypatch):
    from helpers.portable.options import CUBLASLT_ENV, EngineOptions

    monkeypatch.setenv(CUBLASLT_ENV, "0")
    assert not EngineOptions.from_environment().cublaslt
    assert not cublaslt.available(torch.device("cpu"))
    monkeypatch.setenv(CUBLASLT_ENV, "1")
    assert EngineOptions.from_environment().cublaslt


@pytest.mark.parametrize("with_bias,gelu", [(False, False), (True, False), (True, True)])
def test_cpu_runs_the_pytorch_gemm(with_bias, gelu):
    rows, weight = torch.randn(13, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64) if with_bias else None
    torch.testing.assert_close(cublaslt.linear(rows, weight, bias, gelu), oracle(rows, weight, bias, gelu))
    out = torch.empty(13, 5, dtype=torch.float64)
    assert cublaslt.torch_linear(rows, weight, bias, gelu, out=out) is out
    torch.testing.assert_close(out, oracle(rows, weight, bias, gelu))


@pytest.mark.parametrize("form", ["tanh", "erf"])
def test_pytorch_gemm_applies_the_gelu_of_its_form(form):
    """float64 on the CPU: far closer than |erf GELU - tanh GELU| (up to 5e-4), so the form is pinned."""
    rows, weight, bias = torch.randn(13, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64), \
        torch.randn(5, dtype=torch.float64)
    expected = oracle(rows, weight, bias, True, form)
    torch.testing.assert_close(cublaslt.torch_linear(rows, weight, bias, True, form=form), expected)
    out = torch.empty(13, 5, dtype=torch.float64)
    assert cublaslt.torch_linear(rows, weight, bias, True, out=out, form=form) is out
    torch.testing.assert_close(out, expected)


def test_gelu_needs_a_bias():
    with pytest.raises(ValueError, match="bias"):
        cublaslt.linear(torch.randn(2, 3), torch.randn(4, 3), None, gelu=True)


def installed_headers() -> str | None:
    """The text of the installed cublasLt.h, cublas_api.h and library_types.h, or None."""
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    roots += [os.path.join(folder, "**") for folder in cublaslt._package_folders("nvidia")]
    for root in filter(None, roots):
        found = glob.glob(os.path.join(root, "include", "cublasLt.h"), recursive=True)
        if found:
            folder = os.path.dirname(found[0])
            texts = []
            for name in ("cublasLt.h", "cublas_api.h", "library_types.h"):
                path = os.path.join(folder, name)
                if os.path.exists(path):
                    with open(path, encoding="utf-8", errors="replace") as handle:
                        texts.append(handle.read())
            return "\n".join(texts)
    return None


def test_constants_match_the_installed_header():
    text = installed_headers()
    if text is None:
        pytest.skip("no cublasLt.h installed here")
    values = enum_values(re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S))
    ours = {name: getattr(cublaslt, name) for name in dir(cublaslt) if name.startswith(("CUDA_R_", "CUBLAS"))}
    ours.update({"CUBLASLT_EPILOGUE_DEFAULT": cublaslt.Epilogue.NONE, "CUBLASLT_EPILOGUE_BIAS": cublaslt.Epilogue.BIAS,
                 "CUBLASLT_EPILOGUE_GELU_BIAS": cublaslt.Epilogue.GELU_BIAS})
    ours.update({f"CUBLAS_STATUS_{name.split('CUBLAS_STATUS_')[1]}": status
                 for status, name in cublaslt.STATUS_NAMES.items()})
    assert {name: values.get(name) for name in ours} == {name: int(value) for name, value in ours.items()}
    struct = re.search(r"typedef struct \{([^}]*)\}\s*cublasLtMatmulHeuristicResult_t;", text)
    assert struct is not None
    fields = re.findall(r"\b(\w+)(?:\[\d+\])?;", re.sub(r"/\*.*?\*/|//[^\n]*", "", struct.group(1), flags=re.S))
    assert fields == [name for name, _ in cublaslt.HeuristicResult._fields_]
    assert ctypes_size(cublaslt.HeuristicResult) == 96 and ctypes_size(cublaslt.MatmulAlgo) == 64


def enum_values(text: str) -> dict[str, int]:
    """``NAME = value`` of C enums, where the value is a number or an ``|``/``<<`` expression of
    numbers and names defined before it."""
    values: dict[str, int] = {}
    for name, expression in re.findall(r"\b([A-Z][A-Z0-9_]+)\s*=\s*([^,}\n]+)", text):
        expression = re.sub(r"\b([A-Z][A-Z0-9_]+)\b", lambda match: str(values.get(match.group(1), "x")), expression)
        expression = re.sub(r"\b(\d+)[uUlL]+\b", r"\1", expression.strip())
        if re.fullmatch(r"[0-9a-fA-FxX|()<\s]+", expression) and "x" not in expression.replace("0x", ""):
            values[name] = int(eval(expression))  # digits, hex, |, <<, parentheses only
    return values


def ctypes_size(struct: type) -> int:
    import ctypes

    return ctypes.sizeof(struct)


# ---- CUDA

@pytest.fixture
def always_cublaslt(monkeypatch):
    """Fresh tuning, in which cuBLASLt wins every shape it has a correct algorithm for (so that
    the cuBLASLt path is what the test checks, whatever PyTorch's speed)."""
    monkeypatch.setattr(cublaslt, "MIN_GAIN", -math.inf)
    monkeypatch.setattr(cublaslt, "_choices", {})
    torch.manual_seed(0)


def fp16_operands(m: int, n: int, k: int, with_bias: bool):
    rows = torch.randn(m, k, device="cuda").half()
    weight = (torch.randn(n, k, device="cuda") / math.sqrt(k)).half()
    bias = torch.randn(n, device="cuda").half() if with_bias else None
    return rows, weight, bias


EPILOGUES = [(False, False), (True, False), (True, True)]  # (bias, GELU)


@cuda_only
@pytest.mark.parametrize("with_bias,gelu", EPILOGUES)
@pytest.mark.parametrize("m,n,k", [(1, 1000, 129), (7, 129, 7), (129, 3072, 1000), (1000, 7, 3072), (384, 3072, 1024)])
def test_tuned_gemm_matches_the_oracle(always_cublaslt, m, n, k, with_bias, gelu):
    rows, weight, bias = fp16_operands(m, n, k, with_bias)
    got = cublaslt.linear(rows, weight, bias, gelu)
    assert got.shape == (m, n) and got.dtype == torch.float16 and got.is_contiguous()
    torch.testing.assert_close(got.double(), oracle(rows, weight, bias, gelu), **FP16_TOLERANCE)
    [choice] = cublaslt.choices()
    assert (choice.m, choice.n, choice.k) == (cublaslt.m_bucket(m), n, k)
    assert choice.candidates == 0 or choice.rejected < choice.candidates
    if choice.algo is None:  # no cuBLASLt algorithm at all for this shape: PyTorch's call ran
        assert choice.best_cublaslt_us is None
    # The second call reuses the choice.
    torch.testing.assert_close(cublaslt.linear(rows, weight, bias, gelu), got, atol=0, rtol=0)
    assert len(cublaslt.choices()) == 1


@cuda_only
@pytest.mark.parametrize("with_bias,gelu", EPILOGUES)
def test_a_bucket_algorithm_serves_every_m_of_its_bucket(always_cublaslt, with_bias, gelu):
    n, k = 3072, 1024
    _, weight, bias = fp16_operands(1, n, k, with_bias)
    for m in (1000, 897, 1023, 1024, 900):  # all in the bucket of 1024, tuned at the first
        rows = torch.randn(m, k, device="cuda").half()
        torch.testing.assert_close(cublaslt.linear(rows, weight, bias, gelu).double(),
                                   oracle(rows, weight, bias, gelu), **FP16_TOLERANCE)
    [choice] = cublaslt.choices()
    assert choice.m == 1024 and choice.algo is not None


@cuda_only
@pytest.mark.parametrize("m,n,k", [(7, 129, 7), (1000, 3072, 1000)])
def test_pytorch_gemm_applies_the_erf_gelu_on_cuda(m, n, k):
    """cuBLASLt's GELU epilogue is the tanh form: the erf GELU is PyTorch's exact GELU after the GEMM."""
    rows, weight, bias = fp16_operands(m, n, k, True)
    got = cublaslt.torch_linear(rows, weight, bias, True, form="erf")
    assert got.shape == (m, n) and got.dtype == torch.float16
    torch.testing.assert_close(got.double(), oracle(rows, weight, bias, True, "erf"), **FP16_TOLERANCE)


@cuda_only
def test_strided_rows(always_cublaslt):
    rows, weight, bias = fp16_operands(300, 512, 256, True)
    wide = torch.randn(300, 264, device="cuda").half()
    wide[:, :256] = rows
    view = wide[:, :256]  # row stride 264, a multiple of 8: read in place
    torch.testing.assert_close(cublaslt.linear(view, weight, bias).double(), oracle(rows, weight, bias, False),
                               **FP16_TOLERANCE)
    odd = torch.randn(300, 259, device="cuda").half()
    odd[:, :256] = rows  # row stride 259: copied first
    torch.testing.assert_close(cublaslt.linear(odd[:, :256], weight, bias).double(),
                               oracle(rows, weight, bias, False), **FP16_TOLERANCE)


@cuda_only
@pytest.mark.parametrize("with_bias,gelu", EPILOGUES)
def test_tuned_gemm_replays_in_a_cuda_graph(always_cublaslt, with_bias, gelu):
    rows, weight, bias = fp16_operands(384, 1024, 768, with_bias)
    cublaslt.linear(rows, weight, bias, gelu)  # tunes, outside of the capture
    untuned_rows = torch.randn(5, 768, device="cuda").half()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        out = cublaslt.linear(rows, weight, bias, gelu)
        untuned_out = cublaslt.linear(untuned_rows, weight, bias, gelu)  # PyTorch's call, no tuning inside
    assert len(cublaslt.choices()) == 1 and cublaslt.choices()[0].algo is not None
    rows.copy_(torch.randn_like(rows))
    untuned_rows.copy_(torch.randn_like(untuned_rows))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out.double(), oracle(rows, weight, bias, gelu), **FP16_TOLERANCE)
    torch.testing.assert_close(untuned_out.double(), oracle(untuned_rows, weight, bias, gelu), **FP16_TOLERANCE)


@cuda_only
def test_engine_logits_with_and_without_cublaslt(tmp_path, always_cublaslt, monkeypatch):
    from test_kernels import build_tiny_engine, reference_and_fast_plans, run_plan

    from helpers.portable.engine_file import read_engine
    from helpers.portable.options import EngineOptions

    # 111 rows: the few-rows GEMM's range, which cuBLASLt would not see
    options = EngineOptions(few_rows_gemm=False)
    batch, seq = 3, 37
    description = read_engine(build_tiny_engine(tmp_path, True, batch, seq))
    dev = torch.device("cuda")
    mask = torch.ones(batch, seq, dtype=torch.int32, device="cuda")
    mask[1, 20:] = 0
    inputs = (torch.randint(0, 97, (batch, seq), dtype=torch.int32, device="cuda"),
              torch.randint(0, 2, (batch, seq), dtype=torch.int32, device="cuda"), mask)
    _, fast = reference_and_fast_plans(description, dev, options)
    tuned = run_plan(fast, description, inputs)
    # Every dense GEMM shape of the engine (QKV, attention out, FC1 + GELU, FC2, the SQuAD head).
    assert {(c.n, c.k, c.epilogue) for c in cublaslt.choices() if c.algo is not None} >= {
        (192, 64, cublaslt.Epilogue.BIAS), (64, 64, cublaslt.Epilogue.NONE), (256, 64, cublaslt.Epilogue.GELU_BIAS),
        (64, 256, cublaslt.Epilogue.NONE)}
    _, pytorch_gemms = reference_and_fast_plans(description, dev, EngineOptions(few_rows_gemm=False, cublaslt=False))
    untuned = run_plan(pytorch_gemms, description, inputs)
    torch.testing.assert_close(tuned, untuned, atol=2e-2, rtol=2e-2)
