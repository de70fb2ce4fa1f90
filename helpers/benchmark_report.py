"""Markdown latency tables, in the layout of the original README, from perf.py --json files.

Results live as ``<results>/<model>/<precision>/seqlen<S>_bs<B>.json`` (what
scripts/inference_benchmark.sh writes).  Per model one table: a row per (sequence length, batch
size), and for each precision the 95th percentile, 99th percentile and average latency in ms.

Usage: ``python3 -m helpers.benchmark_report RESULTS_DIR``
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers.cli import exit_on_interrupt
from helpers.timing_statistics import JSON_FORMAT_VERSION

RESULT_NAME = re.compile(r"seqlen(\d+)_bs(\d+)\.json")
PRECISION_LABELS = {"int8-qat": "INT8 QAT", "int8": "INT8", "fp16": "FP16", "fp32": "FP32"}
STATISTICS = (("p95_ms", "95th Percentile"), ("p99_ms", "99th Percentile"), ("avg_ms", "Average"))


@dataclass(frozen=True)
class Measurement:
    model: str
    precision: str
    sequence_length: int
    batch_size: int
    avg_ms: float
    p95_ms: float
    p99_ms: float


def result_path(results_dir: Path, model: str, precision: str, sequence_length: int, batch_size: int) -> Path:
    return results_dir / model / precision / f"seqlen{sequence_length}_bs{batch_size}.json"


def load_measurements(results_dir: str | Path) -> list[Measurement]:
    """Every batch-size record of every result file under ``results_dir``, in a stable order."""
    measurements = []
    for path in sorted(Path(results_dir).glob("*/*/seqlen*_bs*.json")):
        match = RESULT_NAME.fullmatch(path.name)
        if not match:
            continue
        model, precision = path.parent.parent.name, path.parent.name
        report = json.loads(path.read_text(encoding="utf-8"))
        if report.get("format_version") != JSON_FORMAT_VERSION:
            raise ValueError(f"{path}: perf JSON format_version {report.get('format_version')!r}, expected {JSON_FORMAT_VERSION}")
        for record in report["results"]:
            measurements.append(
                Measurement(
                    model=model,
                    precision=precision,
                    sequence_length=report["sequence_length"],
                    batch_size=record["batch_size"],
                    avg_ms=record["avg_ms"],
                    p95_ms=record["p95_ms"],
                    p99_ms=record["p99_ms"],
                )
            )
    return measurements


def _precision_order(precision: str) -> tuple[int, str]:
    order = list(PRECISION_LABELS)
    return (order.index(precision) if precision in order else len(order), precision)


def _markdown_rows(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    separator = "| " + " | ".join("-" * width for width in widths) + " |"
    return [lines[0], separator, *lines[1:]]


def model_table(measurements: list[Measurement], model: str) -> str:
    """The Markdown table of one model."""
    mine = [m for m in measurements if m.model == model]
    precisions = sorted({m.precision for m in mine}, key=_precision_order)
    shapes = sorted({(m.sequence_length, m.batch_size) for m in mine})
    by_key = {(m.precision, m.sequence_length, m.batch_size): m for m in mine}

    header = ["Sequence Length", "Batch Size"]
    subheader = ["", ""]
    for precision in precisions:
        header += [f"{PRECISION_LABELS.get(precision, precision.upper())} Latency (ms)", "", ""]
        subheader += [label for _, label in STATISTICS]
    rows = [header, subheader]
    for seq, batch in shapes:
        row = [str(seq), str(batch)]
        for precision in precisions:
            m = by_key.get((precision, seq, batch))
            row += [f"{getattr(m, key):.2f}" if m else "-" for key, _ in STATISTICS]
        rows.append(row)
    return "\n".join([f"##### BERT {model}", "", *_markdown_rows(rows)])


def render_report(measurements: list[Measurement]) -> str:
    models = list(dict.fromkeys(m.model for m in measurements))
    return "\n\n".join(model_table(measurements, model) for model in models)


@exit_on_interrupt
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python3 -m helpers.benchmark_report RESULTS_DIR", file=sys.stderr)
        return 1
    try:
        measurements = load_measurements(args[0])
    except (ValueError, KeyError) as err:
        print(f"error: unreadable benchmark result: {err}", file=sys.stderr)
        return 1
    if not measurements:
        print(f"error: no benchmark results under {args[0]}", file=sys.stderr)
        return 1
    print(render_report(measurements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
