"""FP16 GEMMs through cuBLASLt with each shape's algorithm chosen by timing (the fast path's GEMMs).

PyTorch runs every GEMM on cuBLASLt's heuristic first choice, not the fastest for some of BERT's
shapes.  ``linear`` computes ``rows @ weightᵀ (+ bias) (→ tanh GELU)`` for FP16 ``rows [M, K]``,
``weight [N, K]`` (the engine's layout) and ``bias [N]`` as one ``cublasLtMatmul`` call, through a
ctypes binding of the libcublasLt that PyTorch has loaded.  cuBLASLt is column-major, so it
computes ``outᵀ [N, M] = weight · rowsᵀ``.

The first time a shape is seen outside CUDA graph capture, cuBLASLt's heuristic proposes up to
``CANDIDATES`` algorithms; each is checked against PyTorch's result and captured in a CUDA graph
(operands rotated through enough copies to miss in L2, as the model's 24 layers of weights do), and
so is PyTorch's own call; the graphs are replayed in turns and each one's median is kept (measured
one after the other, the first ones ran on a cooler GPU and looked up to 20 % slower).  PyTorch's
call keeps the shape unless the fastest cuBLASLt algorithm beats it by ``MIN_GAIN``.  What this
gains end to end: docs/perf/KERNELS.md, "cuBLASLt with per-shape algorithm tuning".

The row count M is bucketed (``m_bucket``: at most 25 % above M, four buckets per octave) so that
packed engines, whose M changes with every batch, tune a bounded number of shapes; a bucket is
tuned at its largest M, and its algorithm serves every M in it.  A shape first seen during capture
runs PyTorch's call (no timing and no synchronisation inside a capture), and is tuned at its first
run outside of one; the runner makes an ordinary run before it captures a graph.  Choices are kept
for the life of the process.

Everything else, and everything where the library cannot be loaded (CPU,
ROCm), runs PyTorch's call (``torch_linear``): FP32, misaligned or empty operands.  A cuBLASLt call
returning an error status raises ``CublasLtError`` naming the call.  One run at a time per device:
the runs share one workspace, like the engine's single execution stream.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import functools
import glob
import importlib.util
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from helpers.portable.ops import GeluForm

CANDIDATES = 32
MIN_GAIN = 0.03  # cuBLASLt must be this much faster than PyTorch's call to take a shape over
WORKSPACE_BYTES = 32 << 20
ALIGNMENT_BYTES = 16  # the operand alignment tuned algorithms may assume; less aligned runs go to PyTorch
LAYOUT_CACHE = 64  # (M, row stride) layouts kept per shape
TIMING_ROUNDS = 9
MIN_CALLS_PER_GRAPH = 4
MAX_OPERAND_COPIES = 16
# The tuning check: FP16 outputs of unit scale, accumulated in FP32 in a different order.
CHECK_TOLERANCE = {"atol": 1e-2, "rtol": 1e-2}

# cublasLt.h / library_types.h / cublas_api.h values (tests/test_cublaslt.py checks them against the
# installed header where there is one).
CUDA_R_16F = 2
CUDA_R_32F = 0
CUBLAS_COMPUTE_32F = 68
CUBLAS_OP_N = 0
CUBLAS_OP_T = 1
CUBLAS_STATUS_NOT_SUPPORTED = 15
CUBLASLT_MATMUL_DESC_TRANSA = 3
CUBLASLT_MATMUL_DESC_TRANSB = 4
CUBLASLT_MATMUL_DESC_EPILOGUE = 7
CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8
CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1
CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5
CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6
CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7
CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8
STATUS_NAMES = {0: "CUBLAS_STATUS_SUCCESS", 1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED",
                7: "CUBLAS_STATUS_INVALID_VALUE", 8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR",
                13: "CUBLAS_STATUS_EXECUTION_FAILED", 14: "CUBLAS_STATUS_INTERNAL_ERROR",
                15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR"}


class Epilogue(enum.IntEnum):
    """cublasLtEpilogue_t: what the GEMM's epilogue does after ``rows @ weightᵀ``."""

    NONE = 1  # CUBLASLT_EPILOGUE_DEFAULT
    BIAS = 4  # CUBLASLT_EPILOGUE_BIAS
    GELU_BIAS = 36  # CUBLASLT_EPILOGUE_GELU_BIAS: bias, then the tanh GELU


class CublasLtError(RuntimeError):
    pass


class MatmulAlgo(ctypes.Structure):
    """cublasLtMatmulAlgo_t: opaque, 8 × uint64."""

    _fields_ = [("data", ctypes.c_uint64 * 8)]


class HeuristicResult(ctypes.Structure):
    """cublasLtMatmulHeuristicResult_t."""

    _fields_ = [("algo", MatmulAlgo), ("workspaceSize", ctypes.c_size_t), ("state", ctypes.c_int),
                ("wavesCount", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


# ---- pure logic (tested on CPU)

def m_bucket(m: int) -> int:
    """The tuning bucket of ``m`` rows: ``m`` itself up to 8, else ``m`` rounded up to a multiple of a
    quarter of its power-of-two octave (128, 384, 16384, 49152 are their own buckets; 129 → 160)."""
    if m <= 8:
        return m
    step = 1 << (m.bit_length() - 3)
    return -(-m // step) * step


def mapped_library(maps_text: str, prefix: str = "libcublasLt.so") -> str | None:
    """The path of the first file named ``prefix*`` in a /proc/<pid>/maps listing."""
    for line in maps_text.splitlines():
        path = line.split(maxsplit=5)[5].strip() if len(line.split(maxsplit=5)) == 6 else ""
        if os.path.basename(path).startswith(prefix):
            return path
    return None


def library_path() -> str | None:
    """libcublasLt as PyTorch loaded it (the process's mapped files), else the nvidia-cublas wheel's,
    else the system's; None where there is none."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
            mapped = mapped_library(handle.read())
    except OSError:
        mapped = None
    if mapped:
        return mapped
    for root in _package_folders("nvidia"):
        found = sorted(glob.glob(os.path.join(root, "**", "libcublasLt.so*"), recursive=True))
        if found:
            return found[0]
    return ctypes.util.find_library("cublasLt")


def _package_folders(name: str) -> list[str]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    return list(spec.submodule_search_locations or []) if spec is not None else []


@functools.lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL | None:
    """cuBLASLt with the argument types of the calls made here, loaded once; None without CUDA or
    where the library or one of its functions is missing."""
    if not torch.cuda.is_available() or torch.version.hip is not None:
        return None
    path = library_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    p, i32, u64, i64, size = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int64, ctypes.c_size_t
    signatures: dict[str, list] = {
        "cublasLtCreate": [ctypes.POINTER(p)],
        "cublasLtMatmulDescCreate": [ctypes.POINTER(p), i32, i32],
        "cublasLtMatmulDescSetAttribute": [p, i32, p, size],
        "cublasLtMatrixLayoutCreate": [ctypes.POINTER(p), i32, u64, u64, i64],
        "cublasLtMatrixLayoutDestroy": [p],
        "cublasLtMatmulPreferenceCreate": [ctypes.POINTER(p)],
        "cublasLtMatmulPreferenceSetAttribute": [p, i32, p, size],
        "cublasLtMatmulPreferenceDestroy": [p],
        "cublasLtMatmulAlgoGetHeuristic": [p, p, p, p, p, p, p, i32, ctypes.POINTER(HeuristicResult),
                                           ctypes.POINTER(i32)],
        "cublasLtMatmul": [p, p, p, p, p, p, p, p, p, p, p, p, ctypes.POINTER(MatmulAlgo), p, size, p],
    }
    try:
        for name, argtypes in signatures.items():
            function = getattr(lib, name)
            function.argtypes, function.restype = argtypes, ctypes.c_int
    except AttributeError:
        return None
    return lib


def available(device: torch.device) -> bool:
    """cuBLASLt GEMMs run on ``device``: CUDA, and the library loads.  (An engine built with
    ``EngineOptions(cublaslt=False)`` calls ``torch_linear`` instead of ``linear``.)"""
    return device.type == "cuda" and load_library() is not None


def _check(status: int, call: str) -> None:
    if status != 0:
        raise CublasLtError(f"{call} failed: {STATUS_NAMES.get(status, 'unknown status')} ({status})")


def _lib() -> ctypes.CDLL:
    lib = load_library()
    if lib is None:
        raise CublasLtError("libcublasLt is not loaded")
    return lib


# ---- descriptors

def _set(setter: Callable[..., int], obj: ctypes.c_void_p, attr: int, value: Any, call: str) -> None:
    _check(setter(obj, attr, ctypes.byref(value), ctypes.sizeof(value)), call)


def _layout(rows: int, cols: int, ld: int) -> ctypes.c_void_p:
    """A column-major FP16 matrix layout."""
    layout = ctypes.c_void_p()
    _check(_lib().cublasLtMatrixLayoutCreate(ctypes.byref(layout), CUDA_R_16F, rows, cols, ld),
           "cublasLtMatrixLayoutCreate")
    return layout


class _Shape:
    """The descriptors of one (N, K, epilogue): the matmul description (the bias pointer is set per
    call) and the weight's layout, plus the row and output layouts of the M (and row strides) seen."""

    def __init__(self, n: int, k: int, epilogue: Epilogue) -> None:
        lib = _lib()
        self.n, self.k, self.epilogue = n, k, epilogue
        self.desc = ctypes.c_void_p()
        _check(lib.cublasLtMatmulDescCreate(ctypes.byref(self.desc), CUBLAS_COMPUTE_32F, CUDA_R_32F),
               "cublasLtMatmulDescCreate")
        set_desc = lib.cublasLtMatmulDescSetAttribute
        _set(set_desc, self.desc, CUBLASLT_MATMUL_DESC_TRANSA, ctypes.c_int32(CUBLAS_OP_T),
             "cublasLtMatmulDescSetAttribute(TRANSA)")
        _set(set_desc, self.desc, CUBLASLT_MATMUL_DESC_TRANSB, ctypes.c_int32(CUBLAS_OP_N),
             "cublasLtMatmulDescSetAttribute(TRANSB)")
        _set(set_desc, self.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, ctypes.c_uint32(int(epilogue)),
             "cublasLtMatmulDescSetAttribute(EPILOGUE)")
        self.weight_layout = _layout(k, n, k)  # [N, K] row-major = K × N column-major, transposed by TRANSA
        self.io_layouts: dict[tuple[int, int], tuple[ctypes.c_void_p, ctypes.c_void_p]] = {}

    def layouts(self, m: int, ld: int) -> tuple[ctypes.c_void_p, ctypes.c_void_p]:
        """(rows as K × M column-major with leading dimension ``ld``, output as N × M)."""
        key = (m, ld)
        pair = self.io_layouts.get(key)
        if pair is None:
            if len(self.io_layouts) >= LAYOUT_CACHE:
                for layout in self.io_layouts.pop(next(iter(self.io_layouts))):
                    _check(_lib().cublasLtMatrixLayoutDestroy(layout), "cublasLtMatrixLayoutDestroy")
            pair = self.io_layouts[key] = (_layout(self.k, m, ld), _layout(self.n, m, self.n))
        return pair

    def heuristic(self, m: int, count: int) -> list[HeuristicResult]:
        """Up to ``count`` algorithms for M = ``m`` rows, best guess first."""
        lib = _lib()
        preference = ctypes.c_void_p()
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(preference)), "cublasLtMatmulPreferenceCreate")
        try:
            set_pref = lib.cublasLtMatmulPreferenceSetAttribute
            _set(set_pref, preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, ctypes.c_uint64(WORKSPACE_BYTES),
                 "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)")
            for attr in (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                         CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES):
                _set(set_pref, preference, attr, ctypes.c_uint32(ALIGNMENT_BYTES),
                     "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)")
            rows_layout, out_layout = self.layouts(m, self.k)
            results = (HeuristicResult * count)()
            returned = ctypes.c_int(0)
            status = lib.cublasLtMatmulAlgoGetHeuristic(
                _handle(torch.cuda.current_device()), self.desc, self.weight_layout, rows_layout, out_layout,
                out_layout, preference, count, results, ctypes.byref(returned))
            if status == CUBLAS_STATUS_NOT_SUPPORTED:  # no algorithm for this problem
                return []
            _check(status, "cublasLtMatmulAlgoGetHeuristic")
            return [results[i] for i in range(returned.value) if results[i].state == 0]
        finally:
            _check(lib.cublasLtMatmulPreferenceDestroy(preference), "cublasLtMatmulPreferenceDestroy")


@functools.lru_cache(maxsize=None)
def _handle(device_index: int) -> ctypes.c_void_p:
    handle = ctypes.c_void_p()
    with torch.cuda.device(device_index):
        _check(_lib().cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
    return handle


@functools.lru_cache(maxsize=None)
def _workspace(device_index: int) -> torch.Tensor:
    return torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=torch.device("cuda", device_index))


@functools.lru_cache(maxsize=None)
def _shape(n: int, k: int, epilogue: Epilogue) -> _Shape:
    return _Shape(n, k, epilogue)


@functools.lru_cache(maxsize=None)
def _tuning_stream(device_index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(device=device_index)


_ONE, _ZERO = ctypes.c_float(1.0), ctypes.c_float(0.0)


def _matmul(shape: _Shape, algo: MatmulAlgo, rows: torch.Tensor, ld: int, weight: torch.Tensor,
            bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """``out [M, N] = epilogue(rows [M, K] (row stride ``ld``) @ weightᵀ)`` on the current stream."""
    lib = _lib()
    device = rows.device.index
    if bias is not None:
        _set(lib.cublasLtMatmulDescSetAttribute, shape.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
             ctypes.c_void_p(bias.data_ptr()), "cublasLtMatmulDescSetAttribute(BIAS_POINTER)")
    rows_layout, out_layout = shape.layouts(rows.shape[0], ld)
    _check(lib.cublasLtMatmul(
        _handle(device), shape.desc, ctypes.byref(_ONE), weight.data_ptr(), shape.weight_layout, rows.data_ptr(),
        rows_layout, ctypes.byref(_ZERO), out.data_ptr(), out_layout, out.data_ptr(), out_layout, ctypes.byref(algo),
        _workspace(device).data_ptr(), WORKSPACE_BYTES, torch.cuda.current_stream(rows.device).cuda_stream),
        "cublasLtMatmul")


# ---- tuning

@dataclass(frozen=True)
class Choice:
    """What runs one tuning key: ``algo`` None means PyTorch's call."""

    m: int
    n: int
    k: int
    epilogue: Epilogue
    algo: MatmulAlgo | None
    winner: str  # "torch", or "cuBLASLt #i" (i: the heuristic's rank, 0 = its first choice)
    torch_us: float
    best_cublaslt_us: float | None  # the fastest correct candidate
    candidates: int
    rejected: int  # candidates that failed to run or gave a wrong result


_choices: dict[tuple[int, int, int, int, Epilogue], Choice] = {}


def choices() -> list[Choice]:
    """Every tuning result of this process, in the order they were made."""
    return list(_choices.values())


def clear_choices() -> None:
    """Forget every choice: each shape is tuned again at its next call outside of a capture."""
    _choices.clear()


def torch_linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 gelu: bool = False, out: torch.Tensor | None = None, form: GeluForm = "tanh") -> torch.Tensor:
    """PyTorch's call (cuBLAS, the tanh GELU in cuBLASLt's epilogue on CUDA; the erf GELU one
    PyTorch pass after it): [M, N], into ``out`` if given."""
    into = {} if out is None else {"out": out}
    if gelu:
        if bias is None:
            raise ValueError("the GELU epilogue needs a bias")
        if rows.is_cuda and form == "tanh":
            return torch._addmm_activation(bias, rows, weight.t(), use_gelu=True, **into)
        # ``_addmm_activation``'s GELU is the tanh form on CUDA only (the CPU's is the erf form): any
        # other case runs the GELU of its form after the GEMM.
        approximate = "tanh" if form == "tanh" else "none"
        return torch.nn.functional.gelu(torch.addmm(bias, rows, weight.t()), approximate=approximate, **into)
    return torch.addmm(bias, rows, weight.t(), **into) if bias is not None else torch.mm(rows, weight.t(), **into)


def _capture(calls: Callable[[], object], stream: torch.cuda.Stream) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            calls()
        finally:
            graph.capture_end()
    return graph


def _round_robin_us(graphs: list[torch.cuda.CUDAGraph], calls: int, stream: torch.cuda.Stream) -> list[float]:
    """Median device time per call of each graph (of ``calls`` calls), the graphs replayed in turn
    ``TIMING_ROUNDS`` times after one warm-up round: clock and temperature drift reach all alike."""
    with torch.cuda.stream(stream):
        for graph in graphs:
            graph.replay()
        events = []
        for _ in range(TIMING_ROUNDS):
            for graph in graphs:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                end.record()
                events.append((start, end))
        stream.synchronize()
    times = [start.elapsed_time(end) * 1e3 / calls for start, end in events]
    return [statistics.median(times[i::len(graphs)]) for i in range(len(graphs))]


def _operand_copies(m: int, n: int, k: int, device: torch.device) -> int:
    """How many operand sets to rotate through so that each call reads its operands from memory."""
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    per_call = 2 * (m * k + n * k + m * n)
    return max(1, min(MAX_OPERAND_COPIES, math.ceil(2 * l2 / per_call)))


def _tune(m: int, n: int, k: int, epilogue: Epilogue, device: torch.device) -> Choice:
    shape = _shape(n, k, epilogue)
    with torch.cuda.device(device):
        candidates = shape.heuristic(m, CANDIDATES)
        copies = _operand_copies(m, n, k, device)
        calls = copies * math.ceil(MIN_CALLS_PER_GRAPH / copies)
        generator = torch.Generator(device=device).manual_seed(0)

        def random(*size: int, scale: float = 1.0) -> torch.Tensor:
            return torch.randn(*size, generator=generator, device=device, dtype=torch.float16).mul_(scale)

        rows = [random(m, k) for _ in range(copies)]
        weights = [random(n, k, scale=k ** -0.5) for _ in range(copies)]
        outs = [torch.empty(m, n, dtype=torch.float16, device=device) for _ in range(copies)]
        bias = random(n) if epilogue != Epilogue.NONE else None
        gelu = epilogue == Epilogue.GELU_BIAS
        expected = torch_linear(rows[0], weights[0], bias, gelu)
        stream = _tuning_stream(device.index)
        stream.wait_stream(torch.cuda.current_stream(device))

        def run_torch() -> None:
            for i in range(calls):
                torch_linear(rows[i % copies], weights[i % copies], bias, gelu, out=outs[i % copies])

        with torch.cuda.stream(stream):  # PyTorch sets up its cuBLAS workspace for a stream on first use
            torch_linear(rows[0], weights[0], bias, gelu, out=outs[0])
        graphs = [_capture(run_torch, stream)]
        ranks = []  # heuristic rank of each correct candidate, in the order of graphs[1:]
        for rank, candidate in enumerate(candidates):
            def run(algo: MatmulAlgo = candidate.algo) -> None:
                for i in range(calls):
                    _matmul(shape, algo, rows[i % copies], k, weights[i % copies], bias, outs[i % copies])

            try:
                with torch.cuda.stream(stream):
                    outs[0].fill_(float("nan"))
                    _matmul(shape, candidate.algo, rows[0], k, weights[0], bias, outs[0])
                    stream.synchronize()
                if bool(torch.isfinite(outs[0]).all()) and torch.allclose(outs[0], expected, **CHECK_TOLERANCE):
                    graphs.append(_capture(run, stream))
                    ranks.append(rank)
            except CublasLtError:
                pass
        torch_us, *cublaslt_us = _round_robin_us(graphs, calls, stream)
        torch.cuda.current_stream(device).wait_stream(stream)
    rejected = len(candidates) - len(ranks)
    if not cublaslt_us:
        return Choice(m, n, k, epilogue, None, "torch", torch_us, None, len(candidates), rejected)
    best_us, best_rank = min(zip(cublaslt_us, ranks))
    if best_us < torch_us * (1 - MIN_GAIN):
        algo = MatmulAlgo.from_buffer_copy(candidates[best_rank].algo)
        return Choice(m, n, k, epilogue, algo, f"cuBLASLt #{best_rank}", torch_us, best_us, len(candidates), rejected)
    return Choice(m, n, k, epilogue, None, "torch", torch_us, best_us, len(candidates), rejected)


def _aligned(*tensors: torch.Tensor) -> bool:
    return all(t.data_ptr() % ALIGNMENT_BYTES == 0 for t in tensors)


def linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           gelu: bool = False) -> torch.Tensor:
    """``rows [M, K] @ weight [N, K]ᵀ (+ bias [N]) (→ tanh GELU)`` as a contiguous [M, N]: a tuned
    cuBLASLt GEMM for FP16 CUDA operands, else ``torch_linear`` (see the module docstring)."""
    m, k = rows.shape
    n = weight.shape[0]
    if (m == 0 or not available(rows.device) or rows.dtype != torch.float16 or weight.dtype != torch.float16
            or (bias is not None and bias.dtype != torch.float16) or (gelu and bias is None)
            or not weight.is_contiguous() or (bias is not None and not bias.is_contiguous())):
        return torch_linear(rows, weight, bias, gelu)
    ld = rows.stride(0)
    if rows.stride(1) != 1 or ld < k or (ld != k and ld % 8):
        rows, ld = rows.contiguous(), k
    if not _aligned(rows, weight, *(() if bias is None else (bias,))):
        return torch_linear(rows, weight, bias, gelu)
    epilogue = Epilogue.GELU_BIAS if gelu else Epilogue.BIAS if bias is not None else Epilogue.NONE
    key = (rows.device.index, m_bucket(m), n, k, epilogue)
    choice = _choices.get(key)
    if choice is None:
        if torch.cuda.is_current_stream_capturing():
            return torch_linear(rows, weight, bias, gelu)
        choice = _choices[key] = _tune(m_bucket(m), n, k, epilogue, rows.device)
    if choice.algo is None:
        return torch_linear(rows, weight, bias, gelu)
    out = torch.empty(m, n, dtype=torch.float16, device=rows.device)
    _matmul(_shape(n, k, epilogue), choice.algo, rows, ld, weight, bias, out)
    return out
