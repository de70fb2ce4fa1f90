#!/usr/bin/env python3
"""Latency benchmark of a variable-sequence-length BERT engine on random inputs.

Like the original, every sequence is ``-s`` tokens long by default (random token ids, so the
packed engine does the padded engine's work).  Two options give real length mixes instead:
``--lengths 17,64,384`` repeats a fixed list over each batch, and ``--squad-lengths`` draws
lengths like SQuAD v1.1 dev features in a 384-token window (question + passage + 3 special tokens;
about half of the window is padding, ~3% of the windows are full), scaled to ``-s``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np

from helpers.cli import RunnerError, check_writable_output, exit_on_error
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
from helpers.squad_lengths import squad_like_lengths


def parse_lengths(text: str, max_length: int) -> list[int]:
    """``"17,64,384"`` → [17, 64, 384], each in 1..max_length."""
    try:
        lengths = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise RunnerError(f"--lengths takes comma-separated integers, got {text!r}") from None
    if not lengths:
        raise RunnerError("--lengths needs at least one length")
    for length in lengths:
        if not 1 <= length <= max_length:
            raise RunnerError(f"length {length} in --lengths is outside 1..{max_length} (the sequence length -s)")
    return lengths


def length_generator(args: argparse.Namespace) -> Callable[[int], list[int]] | None:
    """The per-batch length function for ``benchmark`` (None: every sequence ``-s`` long)."""
    if args.lengths is not None:
        lengths = parse_lengths(args.lengths, args.sequence_length)
        return lambda batch: [lengths[i % len(lengths)] for i in range(batch)]
    if args.squad_lengths:
        # One stream per batch size, so a batch's lengths do not depend on the other -b values.
        return lambda batch: squad_like_lengths(
            batch, args.sequence_length, np.random.default_rng((args.random_seed, batch))
        ).tolist()
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="BERT Inference Benchmark")
    parser.add_argument("-e", "--engine", help="Path to the variable-length BERT engine (TensorRT plan or portable engine)")
    parser.add_argument("-b", "--batch-size", default=[], action="append", type=int,
                        help="Number of sequences per batch; repeat for several (default: 1). The engine needs a profile covering each.")
    parser.add_argument("-s", "--sequence-length", default=128, type=int, help="Longest sequence (the max_seqlen length) (default: 128)")
    add_timing_options(parser)
    parser.add_argument("-r", "--random-seed", default=12345, type=int, help="Seed of the random inputs and lengths (default: 12345)")
    lengths = parser.add_mutually_exclusive_group()
    lengths.add_argument("--lengths", default=None, metavar="L1,L2,...",
                         help="Sequence lengths, repeated over each batch (default: every sequence -s long)")
    lengths.add_argument("--squad-lengths", action="store_true",
                         help="Draw lengths like SQuAD v1.1 dev features (about half of a 384 window is padding)")
    add_run_options(parser)
    return parse_benchmark_args(parser, argv)


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_benchmark_options(args)
    lengths = length_generator(args)
    if args.json is not None:
        check_writable_output(args.json)
    runner = EngineRunner(args.engine, device=args.device, enable_graph=args.enable_graph)
    if not runner.varseqlen:
        raise RunnerError(f"{args.engine} is a fixed-length engine; benchmark it with perf.py")
    summaries = benchmark(
        runner, args.batch_size, args.sequence_length, args.warm_up_runs, args.iterations, args.duration,
        args.random_seed, lengths=lengths,
    )
    for summary in summaries:
        print(format_record(summary))
    if lengths is not None:
        for batch_size in sorted(args.batch_size):
            drawn = lengths(batch_size)
            print(f"Batch Size {batch_size}: {sum(drawn)} tokens, mean sequence length {np.mean(drawn):.1f} of {args.sequence_length}")
    print_peak_memory(runner)
    if args.json is not None:
        write_json(args.json, runner, args.sequence_length, summaries, tool="perf_varseqlen.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
