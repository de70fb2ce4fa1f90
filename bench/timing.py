"""One timing method for every GPU benchmark here: CUDA events around each call, warm-up first,
median and p99 over many calls; plus the hardware ceilings the floors are computed from."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p99_ms: float
    iterations: int


def time_cuda(fn: Callable[[], object], warmup: int = 10, iterations: int = 100) -> Timing:
    """Time ``fn`` on the current stream: one event pair per call, so p99 sees every outlier."""
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    torch.cuda.synchronize()
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    p99_index = min(len(times) - 1, int(round(0.99 * (len(times) - 1))))
    return Timing(times[len(times) // 2], times[p99_index], iterations)


GRAPH_REPEATS = 10


def time_graphed(fn: Callable[[], object]) -> Timing:
    """``time_cuda`` of one call of ``fn`` from replays of a CUDA graph of ``GRAPH_REPEATS`` calls
    (no launch overhead); ``fn`` runs once first on a side stream, to compile and tune outside of
    the capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_REPEATS):
            fn()
    t = time_cuda(graph.replay)
    return Timing(t.median_ms / GRAPH_REPEATS, t.p99_ms / GRAPH_REPEATS, t.iterations)


def _square_matmul(size: int, dtype: torch.dtype) -> tuple[Callable[[], object], Callable[[Timing], float]]:
    """A ``size``³ product on random operands, and the TFLOP/s of a timing of it."""
    a = torch.randn(size, size, dtype=dtype, device="cuda")
    b = torch.randn(size, size, dtype=dtype, device="cuda")
    return (lambda: torch.mm(a, b)), (lambda timing: 2.0 * size**3 / (timing.median_ms * 1e-3) / 1e12)


def matmul_peak_tflops(size: int = 8192, dtype: torch.dtype = torch.float16) -> float:
    """Measured dense matmul rate (TFLOP/s) on random data over a short burst, the compute ceiling
    of the floor."""
    product, tflops = _square_matmul(size, dtype)
    return tflops(time_cuda(product, warmup=5, iterations=30))


def sustained_rate(product: Callable[[], object], rate: Callable[[Timing], float], seconds: float = 10.0) -> float:
    """The rate of ``product`` once the card has settled at its power cap: back-to-back calls for
    ``seconds``, median rate of the last third."""
    rates: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        rates.append(rate(time_cuda(product, warmup=0, iterations=10)))
    settled = rates[len(rates) * 2 // 3:] or rates
    return sorted(settled)[len(settled) // 2]


def sustained_matmul_tflops(seconds: float = 10.0, size: int = 8192, dtype: torch.dtype = torch.float16) -> float:
    """The matmul rate once the card has settled at its power cap (``sustained_rate``).  Under
    sustained load an H100 drops from 1980 MHz to ~1.3-1.5 GHz (700 W), so this is well below
    ``matmul_peak_tflops``'s burst."""
    return sustained_rate(*_square_matmul(size, dtype), seconds)


def copy_bandwidth_tbps(nbytes: int = 2 << 30) -> float:
    """Measured device-to-device copy rate (TB/s, bytes read + written), the memory ceiling."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    timing = time_cuda(lambda: dst.copy_(src), warmup=3, iterations=20)
    return 2.0 * nbytes / (timing.median_ms * 1e-3) / 1e12
