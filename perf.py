#!/usr/bin/env python3
"""Latency benchmark of a fixed-sequence-length BERT engine on random inputs."""

from __future__ import annotations

import argparse
import sys

from helpers.cli import check_writable_output, exit_on_error
from helpers.latency import (
    add_run_options,
    add_timing_options,
    benchmark,
    check_benchmark_options,
    format_record,
    parse_benchmark_args,
    print_peak_memory,
    write_json,
)
from helpers.runner import EngineRunner


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="BERT Inference Benchmark")
    parser.add_argument("-e", "--engine", help="Path to the BERT engine (TensorRT plan or portable engine)")
    parser.add_argument("-b", "--batch-size", default=[], action="append", type=int,
                        help="Batch size to benchmark; repeat for several (default: 1). The engine needs a profile covering each.")
    parser.add_argument("-s", "--sequence-length", default=128, type=int, help="Sequence length (default: 128)")
    add_timing_options(parser)
    parser.add_argument("-r", "--random-seed", default=12345, type=int, help="Seed of the random inputs (default: 12345)")
    add_run_options(parser)
    parser.add_argument("--verbose", action="store_true",
                        help="First print the options the engine runs with (portable engines: precision and kernel switches)")
    return parse_benchmark_args(parser, argv)


def engine_options_lines(runner: EngineRunner) -> list[str]:
    """What ``--verbose`` prints about the loaded engine."""
    if runner.backend != "portable":
        return [f"Engine: {runner.backend}"]
    return [f"Engine: portable, on {runner.device}", *(f"  {line}" for line in runner.engine.options.describe())]


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_benchmark_options(args)
    if args.json is not None:
        check_writable_output(args.json)
    runner = EngineRunner(args.engine, device=args.device, enable_graph=args.enable_graph)
    if args.verbose:
        print("\n".join(engine_options_lines(runner)))
    summaries = benchmark(
        runner, args.batch_size, args.sequence_length, args.warm_up_runs, args.iterations, args.duration, args.random_seed
    )
    for summary in summaries:
        print(format_record(summary))
    print_peak_memory(runner)
    if args.json is not None:
        write_json(args.json, runner, args.sequence_length, summaries, tool="perf.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
