"""Latency benchmark over the engine runner: random inputs, per-batch timing, printed records, JSON.

Shared by perf.py and perf_varseqlen.py; the engine layout decides the input shapes.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch

from helpers.cli import RunnerError, parse_known_options, write_text_atomically
from helpers.runner import EngineRunner, NoProfileError
from helpers.timing_statistics import JSON_FORMAT_VERSION, TimingSummary

PSEUDO_VOCAB_SIZE = 30522


def random_inputs(runner: EngineRunner, max_batch: int, sequence_length: int, seed: int) -> dict[str, np.ndarray]:
    """The demo's random benchmark inputs for the largest batch (numpy's legacy seeded generator);
    segment ids span the model's token types (two for BERT, as in the demo; one for RoBERTa)."""
    np.random.seed(seed)
    token_types = runner.model.token_types
    if runner.varseqlen:
        tokens = max_batch * sequence_length
        return {
            "input_ids": np.random.randint(0, PSEUDO_VOCAB_SIZE, (tokens,), dtype=np.int32),
            "segment_ids": np.random.randint(0, token_types, (tokens,), dtype=np.int32),
            "cu_seqlens": np.arange(0, tokens + 1, sequence_length, dtype=np.int32),
        }
    shape = (max_batch, sequence_length)
    return {
        "input_ids": np.random.randint(0, PSEUDO_VOCAB_SIZE, shape, dtype=np.int32),
        "segment_ids": np.random.randint(0, token_types, shape, dtype=np.int32),
        "input_mask": np.ones(shape, dtype=np.int32),
    }


def inputs_for_batch(
    runner: EngineRunner, inputs: dict[str, np.ndarray], batch_size: int, sequence_length: int, lengths: list[int] | None = None
) -> dict[str, np.ndarray]:
    """The leading part of the max-batch inputs that a batch of ``batch_size`` uses.

    ``lengths`` (variable-length engines only) packs sequences of those lengths instead of
    ``batch_size`` full-length ones.
    """
    if not runner.varseqlen:
        if lengths is not None:
            raise ValueError("sequence length mixes need a variable-length engine")
        return {name: value[:batch_size] for name, value in inputs.items()}
    if lengths is None:
        lengths = [sequence_length] * batch_size
    tokens = int(sum(lengths))
    return {
        "input_ids": inputs["input_ids"][:tokens],
        "segment_ids": inputs["segment_ids"][:tokens],
        "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
    }


def benchmark(
    runner: EngineRunner,
    batch_sizes: list[int],
    sequence_length: int,
    warm_up_runs: int,
    iterations: int,
    duration_s: float,
    seed: int,
    lengths: Callable[[int], list[int]] | None = None,
) -> list[TimingSummary]:
    """Time the engine at each batch size (ascending); raises NoProfileError for an uncovered one.

    ``lengths(batch_size)`` (variable-length engines only) gives the sequence lengths of a batch;
    by default every sequence is ``sequence_length`` long.
    """
    ordered = sorted(batch_sizes)
    lengths_of = {batch_size: None if lengths is None else list(lengths(batch_size)) for batch_size in ordered}
    # Every batch size is checked before the inputs of the largest are made (a batch no profile
    # takes may be far too large to allocate).
    for batch_size, batch_lengths in lengths_of.items():
        total_tokens = None if batch_lengths is None else int(sum(batch_lengths))
        if runner.select_profile(runner.input_shapes(batch_size, sequence_length, total_tokens)) is None:
            raise NoProfileError(batch_size, sequence_length)
    inputs = random_inputs(runner, ordered[-1], sequence_length, seed)
    summaries = []
    for batch_size in ordered:
        batch_lengths = lengths_of[batch_size]
        total_tokens = None if batch_lengths is None else int(sum(batch_lengths))
        runner.activate(batch_size, sequence_length, total_tokens)
        runner.copy_inputs(inputs_for_batch(runner, inputs, batch_size, sequence_length, batch_lengths))
        runner.synchronize()
        if runner.device.type == "cuda":
            # The first run at new shapes may tune GEMM algorithms on scratch operands; the peak
            # reported is the inference's, from here on (batches ascend, so the last one's dominates).
            runner.execute()
            runner.synchronize()
            torch.cuda.reset_peak_memory_stats(runner.device)
        times = runner.time_executions(warm_up_runs, iterations, duration_s)
        summaries.append(TimingSummary.from_times(batch_size, times))
    return summaries


def format_record(summary: TimingSummary) -> str:
    """The per-batch record of perf.py (docs/SPEC.md "perf.py record"), each batch size with its own iteration count."""
    return (
        f"Running {summary.iterations} iterations with Batch Size: {summary.batch_size}\n"
        f"\tTotal Time: {summary.total_ms} ms \tAverage Time: {summary.avg_ms} ms"
        f"\t95th Percentile Time: {summary.p95_ms} ms\t99th Percentile Time: {summary.p99_ms}"
    )


def peak_memory_mib(runner: EngineRunner) -> float | None:
    """Peak PyTorch-allocator memory on the runner's GPU in MiB since ``benchmark`` started timing
    its last batch size (after that size's first run); None on CPU."""
    if runner.device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(runner.device) / 2**20


def write_json(path: str, runner: EngineRunner, sequence_length: int, summaries: list[TimingSummary], tool: str) -> None:
    """All figures of a run, for tools (benchmark tables, comparisons)."""
    report = {
        "format_version": JSON_FORMAT_VERSION,
        "tool": tool,
        "engine": runner.engine_path,
        "backend": runner.backend,
        "device": runner.device_name(),
        "enable_graph": runner.enable_graph,
        "sequence_length": sequence_length,
        "peak_gpu_memory_mib": peak_memory_mib(runner),
        "results": [
            dict(asdict(summary), sequences_per_second=summary.sequences_per_second) for summary in summaries
        ],
    }
    write_text_atomically(path, json.dumps(report, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Command line shared by perf.py and perf_varseqlen.py


def add_timing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--iterations", default=200, type=int, help="Minimum number of timed iterations per batch size (default: 200)")
    parser.add_argument("-w", "--warm-up-runs", default=10, type=int, help="Untimed runs before timing (default: 10)")
    parser.add_argument("-d", "--duration", default=0.0, type=float, help="Minimum seconds of timed runs per batch size (default: 0)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options both benchmarks end their command line with."""
    parser.add_argument("--enable-graph", action="store_true", help="Replay a captured CUDA graph instead of enqueuing (CUDA only)")
    parser.add_argument("--json", default=None, metavar="FILE", help="Also write every figure to FILE as JSON")
    parser.add_argument("--device", default=None, help="Portable engines only: cpu, cuda or cuda:N")


def parse_benchmark_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Unknown options are ignored with a warning, like the original; -b defaults to batch size 1."""
    args = parse_known_options(parser, argv)
    args.batch_size = args.batch_size or [1]
    return args


def check_benchmark_options(args: argparse.Namespace) -> None:
    if not args.engine:
        raise RunnerError("no engine given; pass one with -e/--engine")
    if args.iterations < 1 or args.warm_up_runs < 0 or min(args.batch_size) < 1 or args.sequence_length < 1:
        raise RunnerError("iterations, batch sizes and sequence length must be positive, warm-up runs not negative")
    if not 0 <= args.random_seed < 2**32:
        raise RunnerError(f"-r/--random-seed must be from 0 to {2**32 - 1} (numpy's seed range), got {args.random_seed}")
    # NaN would compare false and end timing at once; inf would never end it.
    if not math.isfinite(args.duration) or args.duration < 0:
        raise RunnerError(f"-d/--duration must be a finite number of seconds, 0 or more, got {args.duration}")


def print_peak_memory(runner: EngineRunner) -> None:
    peak = peak_memory_mib(runner)
    if peak is not None:
        print(f"Peak GPU memory: {peak:.1f} MiB")
