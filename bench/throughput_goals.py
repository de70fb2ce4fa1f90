#!/usr/bin/env python3
"""The 8-bit throughput goal table in one run on one GPU: BERT-large, FP16 / INT8 / FP8.

Rows (each next to the same run's FP16 baseline and sustained FP16 matmul rate):

* packed SQuAD mix (``perf_varseqlen.py --squad-lengths``), batch 128, S = 384: seq/s of the FP16,
  INT8 and FP8 packed engines (``builder_varseqlen.py``; 8-bit by post-training calibration on the
  hand-made SQuAD set);
* fixed length (``perf.py``), batch 128, S = 128 and 384: FP16, INT8 (``-i --strict -iln -imh``)
  and FP8 (``--fp8 --strict -iln -imh``) times and their throughput ratios to FP16;
* FP16 384 × 128 against its floor (matmul FLOPs at the sustained rate, ``bench.compare.floor_ms``);
* FP16 384 × 1.

Every engine is built from one seeded random BERT-large and timed as CUDA-graph replays.  Writes
``throughput_goals.json`` and ``throughput_goals.md`` to ``--out-dir``.  ``--tiny`` checks the
script on the CPU with a small model (FP32 instead of FP16, no matmul rate).

    python -m bench.throughput_goals --out-dir OUT [--tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.compare import floor_ms
from bench.engine_workspace import Setup, Workspace, by_batch, make_setup, perf
from bench.timing import copy_bandwidth_tbps, sustained_matmul_tflops
from helpers.files import write_text_atomically

PRECISIONS = ("float", "int8", "fp8")
# (row, goal as text, test of the measured value)
GOALS = {
    "packed_best_8bit_seq_per_s": ("≥ 7,500 seq/s", lambda v: v >= 7500),
    "packed_fp16_seq_per_s": ("≥ 4,400 seq/s", lambda v: v >= 4400),
    "fp8_over_fp16_s128": ("≥ 1.6×", lambda v: v >= 1.6),
    "fp8_over_fp16_s384": ("≥ 1.6×", lambda v: v >= 1.6),
    "int8_over_fp16_s384": ("≥ 1.7×", lambda v: v >= 1.7),
    "fp16_384x128_over_floor": ("≤ 1.15", lambda v: v <= 1.15),
    "fp16_384x1_ms": ("≤ 0.90 ms", lambda v: v <= 0.90),
}


def packed_flags(ws: Workspace, precision: str) -> list[str]:
    """builder_varseqlen.py options of a packed engine: none for float, else PTQ on the hand-made set."""
    if precision == "float":
        return []
    calibration = ["-j", str(ws.squad()), "-v", ws.vocab(), "-n", "20", "-p", str(ws.root / "packed_calib.cache")]
    return ["-i" if precision == "int8" else "--fp8", *calibration]


def measure(ws: Workspace, seconds: float) -> dict:
    setup = ws.setup
    short, long = setup.seq_lengths
    big = max(setup.batches)
    results: dict = {"setup": {"device": setup.device, "model": setup.model_shape, "batch": big, "seq_lengths": [short, long]}}
    fixed = {}
    for precision in PRECISIONS:
        engine = ws.padded_engine(precision)
        fixed[precision] = {seq: by_batch(perf("perf.py", engine, seq, (1, big), setup)) for seq in (short, long)}
    packed = {}
    for precision in PRECISIONS:
        engine, _ = ws.packed_engine(f"packed_{precision}", ws.model(), packed_flags(ws, precision))
        packed[precision] = by_batch(perf("perf_varseqlen.py", engine, long, (big,), setup, ["--squad-lengths"]))[big]
    results["fixed_ms"] = {p: {str(s): {str(b): row["avg_ms"] for b, row in rows.items()} for s, rows in by_seq.items()}
                           for p, by_seq in fixed.items()}
    results["packed_seq_per_s"] = {p: row["sequences_per_second"] for p, row in packed.items()}

    def ratio(precision: str, seq: int) -> float:
        return fixed["float"][seq][big]["avg_ms"] / fixed[precision][seq][big]["avg_ms"]

    rows = {
        "packed_best_8bit_seq_per_s": max(packed["int8"]["sequences_per_second"], packed["fp8"]["sequences_per_second"]),
        "packed_fp16_seq_per_s": packed["float"]["sequences_per_second"],
        "fp8_over_fp16_s128": ratio("fp8", short),
        "fp8_over_fp16_s384": ratio("fp8", long),
        "int8_over_fp16_s384": ratio("int8", long),
        "fp16_384x1_ms": fixed["float"][long][1]["avg_ms"],
    }
    if setup.device == "cuda":
        rate, bandwidth = sustained_matmul_tflops(seconds), copy_bandwidth_tbps()
        floor, _bound = floor_ms("large", long, big, rate, bandwidth)
        results.update(sustained_fp16_tflops=rate, copy_tbps=bandwidth, fp16_384x128_floor_ms=floor)
        rows["fp16_384x128_over_floor"] = fixed["float"][long][big]["avg_ms"] / floor
    results["goals"] = {name: {"value": value, "goal": GOALS[name][0], "met": GOALS[name][1](value)}
                        for name, value in rows.items()}
    return results


def markdown(results: dict) -> str:
    setup = results["setup"]
    model = "BERT-large" if setup["device"] == "cuda" else "small (--tiny)"
    lines = [f"{model} random model on {setup['device']}, batch {setup['batch']}, S = {setup['seq_lengths']}; "
             "perf.py / perf_varseqlen.py with --enable-graph.", ""]
    if "sustained_fp16_tflops" in results:
        lines += [f"Sustained FP16 matmul rate of this run: {results['sustained_fp16_tflops']:.0f} TFLOP/s; "
                  f"FP16 384 × {setup['batch']} floor {results['fp16_384x128_floor_ms']:.2f} ms.", ""]
    lines += ["| row | measured | goal | |", "|---|---|---|---|"]
    for name, goal in results["goals"].items():
        lines.append(f"| {name} | {goal['value']:.3f} | {goal['goal']} | {'met' if goal['met'] else 'missed'} |")
    lines += ["", "| precision | " + " | ".join(f"S = {s} × {b} ms" for s in setup["seq_lengths"] for b in (1, setup["batch"]))
              + " | packed SQuAD mix seq/s |", "|---|---|---|---|---|---|"]
    for precision, by_seq in results["fixed_ms"].items():
        cells = [f"{by_seq[str(s)][str(b)]:.3f}" for s in setup["seq_lengths"] for b in (1, setup["batch"])]
        lines.append(f"| {precision} | " + " | ".join(cells) + f" | {results['packed_seq_per_s'][precision]:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="a small model on the CPU, to check the script")
    parser.add_argument("--iterations", type=int, default=None, help="timed replays per measurement (default: 100)")
    parser.add_argument("--sustained-seconds", type=float, default=10.0, help="how long the matmul rate is held")
    args = parser.parse_args(argv)
    setup: Setup = make_setup(args.tiny, args.iterations)
    with tempfile.TemporaryDirectory(prefix="throughput_goals.") as scratch:
        results = measure(Workspace(Path(scratch), setup), args.sustained_seconds)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(args.out_dir / "throughput_goals.json", json.dumps(results, indent=1))
    table = markdown(results)
    write_text_atomically(args.out_dir / "throughput_goals.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
