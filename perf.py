#!/usr/bin/env python3
"""Latency benchmark of a fixed-sequence-length BERT engine on random inputs."""

from __future__ import annotations

import argparse
import sys

from helpers.latency import benchmark, format_record, peak_memory_mib, write_json
from helpers.runner import EngineRunner, RunnerError, check_writable_output, exit_on_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="BERT Inference Benchmark")
    parser.add_argument("-e", "--engine", help="Path to the BERT engine (TensorRT plan or portable engine)")
    parser.add_argument("-b", "--batch-size", default=[], action="append", type=int,
                        help="Batch size to benchmark; repeat for several (default: 1). The engine needs a profile covering each.")
    parser.add_argument("-s", "--sequence-length", default=128, type=int, help="Sequence length (default: 128)")
    parser.add_argument("-i", "--iterations", default=200, type=int, help="Minimum number of timed iterations per batch size (default: 200)")
    parser.add_argument("-w", "--warm-up-runs", default=10, type=int, help="Untimed runs before timing (default: 10)")
    parser.add_argument("-d", "--duration", default=0.0, type=float, help="Minimum seconds of timed runs per batch size (default: 0)")
    parser.add_argument("-r", "--random-seed", default=12345, type=int, help="Seed of the random inputs (default: 12345)")
    parser.add_argument("--enable-graph", action="store_true", help="Replay a captured CUDA graph instead of enqueuing (CUDA only)")
    parser.add_argument("--json", default=None, metavar="FILE", help="Also write every figure to FILE as JSON")
    parser.add_argument("--device", default=None, help="Portable engines only: cpu, cuda or cuda:N")
    args, _ = parser.parse_known_args(argv)
    args.batch_size = args.batch_size or [1]
    return args


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.engine:
        raise RunnerError("no engine given; pass one with -e/--engine")
    if args.iterations < 1 or args.warm_up_runs < 0 or min(args.batch_size) < 1 or args.sequence_length < 1:
        raise RunnerError("iterations, batch sizes and sequence length must be positive, warm-up runs not negative")
    if args.json:
        check_writable_output(args.json)
    runner = EngineRunner(args.engine, device=args.device, enable_graph=args.enable_graph)
    summaries = benchmark(
        runner, args.batch_size, args.sequence_length, args.warm_up_runs, args.iterations, args.duration, args.random_seed
    )
    for summary in summaries:
        print(format_record(summary))
    peak = peak_memory_mib(runner)
    if peak is not None:
        print(f"Peak GPU memory: {peak:.1f} MiB")
    if args.json:
        write_json(args.json, runner, args.sequence_length, summaries, tool="perf.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
