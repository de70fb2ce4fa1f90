"""Statistics of timed runs, as the demo computes them: its percentile, and the per-batch-size
summary that perf*.py print.  Free of PyTorch, for the Triton load test too."""

from __future__ import annotations

from dataclasses import dataclass

# Version of the JSON reports perf*.py write (``--json``): their "results" are TimingSummary rows.
JSON_FORMAT_VERSION = 1


def percentile(sorted_times: list[float], fraction: float) -> float:
    """The demo's percentile: ``sorted[int(n * fraction)]`` (no interpolation)."""
    return sorted_times[min(int(len(sorted_times) * fraction), len(sorted_times) - 1)]


@dataclass(frozen=True)
class TimingSummary:
    batch_size: int
    iterations: int
    total_ms: float
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def sequences_per_second(self) -> float:
        return self.batch_size * 1000.0 / self.avg_ms

    @classmethod
    def from_times(cls, batch_size: int, times_ms: list[float]) -> TimingSummary:
        if not times_ms:
            raise ValueError("no timed iterations")
        ordered = sorted(times_ms)
        total = sum(times_ms)
        return cls(
            batch_size=batch_size,
            iterations=len(times_ms),
            total_ms=total,
            avg_ms=total / len(times_ms),
            p50_ms=percentile(ordered, 0.50),
            p95_ms=percentile(ordered, 0.95),
            p99_ms=percentile(ordered, 0.99),
        )
