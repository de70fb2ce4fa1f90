"""Nsight Compute view of the engine's kernels: what bounds each kernel of one encoder layer.

Builds the same random-weight engine as ``bench.compare`` for one model × sequence × batch, runs
one eager forward of the CUDA fast path under ``ncu`` (application clocks, not locked to base, so
durations match the timed runs) and prints, for the first kernels of that forward (embedding,
then the first encoder layers), the duration, compute (SM) and memory throughput as % of peak,
DRAM throughput, grid size and achieved occupancy.

Run from the repository root on the GPU machine (ncu on the PATH):
    python -m bench.ncu_profile --model large --seq 384 --batch 128 [--kernels 12] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile

import torch

from bench.compare import EngineUnderTest, build_engine, make_inputs, save_random_model
from helpers.files import write_text_atomically

WORKLOAD_FLAG = "--workload"
# ncu raw-page columns shown, by header substring (first match), with the table's label.
COLUMNS = (
    ("gpu__time_duration.sum", "µs"),
    ("sm__throughput.avg.pct_of_peak_sustained_elapsed", "SM %"),
    ("gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed", "memory %"),
    ("dram__throughput.avg.pct_of_peak_sustained_elapsed", "DRAM %"),
    ("launch__grid_size", "grid"),
    ("sm__warps_active.avg.pct_of_peak_sustained_active", "occupancy %"),
)
SECTIONS = ("SpeedOfLight", "LaunchStats", "Occupancy", "ComputeWorkloadAnalysis")


def workload(model: str, seq: int, batch: int) -> None:
    """Build the engine, warm it up, then run one forward between the profiler's start and stop."""
    with tempfile.TemporaryDirectory() as folder:
        save_random_model(model, folder)
        path = os.path.join(folder, "bert.engine")
        build_engine(folder, path, [batch], [seq])
        engine = EngineUnderTest(path, fast=True)
        engine.activate(batch, seq, make_inputs(batch, seq, padded=False, seed=2))
        for _ in range(3):
            engine.eager()
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        engine.eager()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


def parse_raw_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """ncu's ``--csv --page raw`` output → (header, one dict per kernel); ncu's own log lines and
    the units row are skipped."""
    lines = [line for line in text.splitlines() if line.startswith('"')]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    if not rows:
        return [], []
    header, body = rows[0], [r for r in rows[1:] if r and r[0] != ""]
    return header, [dict(zip(header, r)) for r in body]


def markdown(header: list[str], kernels: list[dict[str, str]]) -> str:
    chosen = [(next((h for h in header if key in h), None), label) for key, label in COLUMNS]
    chosen = [(h, label) for h, label in chosen if h is not None]
    head = ["#", "kernel", *[label for _, label in chosen]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, kernel in enumerate(kernels):
        name = kernel.get("Kernel Name", "?")[:70].replace("|", "/")
        cells = []
        for column, label in chosen:
            value = kernel.get(column, "")
            if label == "µs":  # ncu reports nanoseconds or microseconds depending on magnitude
                value = value.replace(",", "")
            cells.append(value)
        lines.append("| " + " | ".join([str(i), name, *cells]) + " |")
    return "\n".join(lines)


def profile(args: argparse.Namespace) -> int:
    ncu = shutil.which("ncu")
    if ncu is None:
        print("error: ncu (Nsight Compute) is not on the PATH", file=sys.stderr)
        return 2
    command = [ncu, "--profile-from-start", "off", "--clock-control", "none", "--csv", "--page", "raw",
               "--print-units", "base", "--launch-count", str(args.kernels)]
    for section in SECTIONS:
        command += ["--section", section]
    command += [sys.executable, "-m", "bench.ncu_profile", WORKLOAD_FLAG,
                "--model", args.model, "--seq", str(args.seq), "--batch", str(args.batch)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    header, kernels = parse_raw_csv(result.stdout)
    if result.returncode != 0 or not kernels:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n", file=sys.stderr)
        print(f"error: ncu exited with {result.returncode} and {len(kernels)} kernel rows", file=sys.stderr)
        return 1
    title = (f"BERT-{args.model}, S = {args.seq}, batch {args.batch}: the first {len(kernels)} kernels of one "
             f"eager forward (ncu, --clock-control none; µs = gpu__time_duration in ns / 1000 below)")
    for kernel in kernels:
        duration = next((k for k in kernel if "gpu__time_duration.sum" in k), None)
        if duration and kernel[duration]:
            kernel[duration] = f"{float(kernel[duration].replace(',', '')) / 1000:.1f}"
    table = f"{title}\n\n{markdown(header, kernels)}\n"
    print(table)
    if args.out:
        write_text_atomically(args.out, table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Nsight Compute metrics of the engine's first kernels.")
    parser.add_argument("--model", default="large", choices=("base", "large"))
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--kernels", type=int, default=12, help="how many kernels of the forward to profile")
    parser.add_argument("--out", help="also write the Markdown table here")
    parser.add_argument(WORKLOAD_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workload:
        workload(args.model, args.seq, args.batch)
        return 0
    return profile(args)


if __name__ == "__main__":
    sys.exit(main())
