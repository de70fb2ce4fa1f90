#!/usr/bin/env python3
"""Engine correctness, packed-vs-padded, sparsity and INT8 records, measured in one process on one GPU.

Sections (``--only`` picks some; default: all):

* ``builder``: ``bench/check_builder_gpu.py``'s table, FP32 and FP16 engines of
  BERT-base/large-shaped random weights against HF (float64) on CUDA.
* ``varseqlen``: ``perf_varseqlen.py --squad-lengths`` on a packed engine against
  ``perf.py`` on a padded engine at S=384, FP16, CUDA graphs for both.
* ``sparsity``: packed FP16 engines of the 2:4-pruned model (``helpers.sparsity``) with
  and without ``-sp``: speed of both and the largest logit difference between them.
* ``int8``: ``perf.py`` on FP16 and INT8 (PTQ-calibrated on a hand-made SQuAD set;
  FP8 too when ``builder.py`` offers ``--fp8``) engines at 128/384 × batch 1/32/128, and
  ``bench/int8_accuracy.py``'s cosine / argmax agreement of each against an FP32 engine.
* ``inference_c``: ``inference_c.py --enable-graph`` against ``inference.py`` on the
  same portable engine (the printed answer and format, timings masked).
* ``profile`` (diagnosis): device time per kernel category (torch.profiler) of the FP16, INT8
  (-imh / -iln / --strict one by one) and FP8 engines at 128 × 32, and of the packed engine.

One random BERT-large folder (HF ``BertForQuestionAnswering``, seeded) is written per run into a
temp folder and reused by every engine.  Each timed engine also gets its peak GPU memory
(``torch.cuda.max_memory_allocated`` over the perf run) next to its engine-file size.

    python -m bench.gpu_records --out-dir docs/perf [--only varseqlen,sparsity] [--tiny]
    python -m bench.gpu_records --merge A/records.json B/records.json --out-dir docs/perf

``--tiny`` runs every section on a small model on the CPU in seconds (FP32 instead of FP16, tiny
lengths and batches), to check the script itself.  Writes records.json (``format_version``) and
records.md into ``--out-dir`` after every section, so a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import builder  # noqa: E402  (after the repository is importable)
import inference  # noqa: E402
import inference_c  # noqa: E402
from bench import check_builder_gpu  # noqa: E402
from bench.compare import profile_kernels  # noqa: E402
from bench.engine_workspace import (  # noqa: E402
    RecordsError,
    Setup,
    Workspace,
    build,
    by_batch,
    call_main,
    free_gpu_memory,
    last_line,
    make_setup,
    memory_cells,
    perf,
)
from bench.int8_accuracy import handmade_features, logits_agreement, run_engine  # noqa: E402
from bench.timing import time_cuda  # noqa: E402
from helpers.demo_model import write_tiny_qa_model  # noqa: E402
from helpers.files import write_json_and_markdown  # noqa: E402
from helpers.runner import EngineRunner  # noqa: E402
from helpers.sparsity import prune_checkpoint  # noqa: E402
from helpers.squad_lengths import squad_like_lengths  # noqa: E402

FORMAT_VERSION = 1
SECTIONS = ("builder", "varseqlen", "sparsity", "int8", "inference_c", "profile")
# Sections measured on the run's shared random model (the others bring their own models).
SHARED_MODEL_SECTIONS = ("varseqlen", "sparsity", "int8", "profile")
PACKED_GOAL = 2.2  # target: packed ≥ 2.2× padded sequences/s on the SQuAD length mix
INT8_GOAL = 1.6  # target: INT8 ≥ 1.6× FP16 sequences/s at the largest batch
ACCURACY_MIN_SEQ = 128  # every answer of the hand-made SQuAD set fits one window from here on
TIMING_LINE = re.compile(r"^(Running inference in |Network time: |End-to-end time: )\d+\.\d{3}", re.MULTILINE)
PASSAGE = (
    "The Apollo program was the third United States human spaceflight program carried out by NASA. It "
    "succeeded in preparing and landing the first humans on the Moon from 1968 to 1972."
)
QUESTION = "Who carried out the Apollo program?"


# ---------------------------------------------------------------------------------------------
# Sections


def section_builder(ws: Workspace) -> dict:
    """check_builder_gpu.py's table (engines vs HF in float64) as it prints it."""
    status, out, err = call_main(check_builder_gpu.main, ws.setup.check_builder_args)
    table = "\n".join(line for line in out.splitlines() if line.startswith("|"))
    heading = next((line for line in out.splitlines() if line.startswith("builder.py engines vs HF")), "")
    notes = [heading] if heading else []
    if status != 0:
        notes.append(f"check_builder_gpu.py exit status {status}: {last_line(err) or 'an error above tolerance'}")
    return {"title": "builder.py engines vs HuggingFace", "passed": status == 0, "table": table,
            "notes": notes, "command": "python3 bench/check_builder_gpu.py " + " ".join(ws.setup.check_builder_args)}


def squad_length_summary(batch: int, seq: int) -> tuple[int, float]:
    """(tokens, mean length) of the lengths perf_varseqlen.py --squad-lengths draws (its default seed)."""
    lengths = squad_like_lengths(batch, seq, np.random.default_rng((12345, batch)))
    return int(lengths.sum()), float(lengths.mean())


def section_varseqlen(ws: Workspace) -> dict:
    """Packed (SQuAD lengths) vs padded at the long sequence length, CUDA graphs for both."""
    setup = ws.setup
    seq, batches = setup.long_seq, setup.packed_batches
    padded = perf("perf.py", ws.padded_engine("float"), seq, batches, setup)
    packed_path, _ = ws.packed_engine("packed_float", ws.model())
    packed_squad = perf("perf_varseqlen.py", packed_path, seq, batches, setup, ["--squad-lengths"])
    packed_full = perf("perf_varseqlen.py", packed_path, seq, batches, setup)
    rows = []
    for batch in batches:
        tokens, mean_length = squad_length_summary(batch, seq)
        pad, squad, full = by_batch(padded)[batch], by_batch(packed_squad)[batch], by_batch(packed_full)[batch]
        ratio = squad["sequences_per_second"] / pad["sequences_per_second"]
        rows.append(dict(batch=batch, seq=seq, squad_tokens=tokens, squad_mean_length=mean_length,
                         padded_ms=pad["avg_ms"], padded_seq_per_s=pad["sequences_per_second"],
                         packed_squad_ms=squad["avg_ms"], packed_squad_seq_per_s=squad["sequences_per_second"],
                         packed_full_ms=full["avg_ms"], packed_full_seq_per_s=full["sequences_per_second"],
                         ratio=ratio, goal_met=ratio >= PACKED_GOAL))
    table = ["| batch | SQuAD-mix tokens (mean length) | padded perf.py ms | padded seq/s | packed perf_varseqlen.py "
             "--squad-lengths ms | packed seq/s | packed / padded | goal ≥ 2.2× | packed, all 384 long: ms / seq/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['batch']} | {r['squad_tokens']} ({r['squad_mean_length']:.1f}) | {r['padded_ms']:.2f} | "
                     f"{r['padded_seq_per_s']:.0f} | {r['packed_squad_ms']:.2f} | {r['packed_squad_seq_per_s']:.0f} | "
                     f"{r['ratio']:.2f}× | {'met' if r['goal_met'] else 'MISSED'} | "
                     f"{r['packed_full_ms']:.2f} / {r['packed_full_seq_per_s']:.0f} |")
    memory = ["| engine | engine file MiB | peak GPU MiB (perf run) |", "|---|---|---|",
              f"| padded {setup.float_name}, profiles b≤{max(setup.batches)} × S {setup.seq_lengths} | {memory_cells(padded)} |",
              f"| packed {setup.float_name}, b≤{max(batches)}, S≤{seq}, SQuAD mix | {memory_cells(packed_squad)} |",
              f"| packed {setup.float_name}, b≤{max(batches)}, S≤{seq}, all {seq} long | {memory_cells(packed_full)} |"]
    return {"title": f"Packed vs padded, {setup.float_name.upper()}, S={seq}, CUDA graphs",
            "passed": all(r["goal_met"] for r in rows), "rows": rows, "table": "\n".join(table),
            "memory_table": "\n".join(memory), "reports": [padded, packed_squad, packed_full], "notes": []}


def short_log_line(line: str, limit: int = 160) -> str:
    """A builder log line without its time/severity prefix, cut to ``limit`` characters."""
    text = re.sub(r"^\[[^]]*\] \[TRT\] \[\w\] ", "", line.strip())
    return text if len(text) <= limit else text[:limit] + "…"


def packed_logits(engine: Path, seq: int, device: str, batch: int) -> np.ndarray:
    """``logits_out`` of one packed batch of SQuAD-like lengths (fixed seed)."""
    lengths = [int(x) for x in squad_like_lengths(batch, seq, np.random.default_rng(7))]
    tokens = sum(lengths)
    rng = np.random.default_rng(8)
    runner = EngineRunner(engine, device=device)
    runner.activate(batch, seq, tokens)
    logits = runner.infer({"input_ids": rng.integers(0, 30522, tokens, dtype=np.int32),
                           "segment_ids": rng.integers(0, 2, tokens, dtype=np.int32),
                           "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)})
    del runner
    free_gpu_memory()
    return logits


def section_sparsity(ws: Workspace) -> dict:
    """The 2:4-pruned model's packed engine with and without -sp."""
    setup = ws.setup
    seq, batches = setup.long_seq, setup.packed_batches
    pruned = ws.once("pruned", lambda path: prune_checkpoint(str(ws.model()), str(path)), "model_2to4")
    dense_path, _ = ws.packed_engine("pruned_dense", pruned)
    sparse_path, sparse_log = ws.packed_engine("pruned_sparse", pruned, ["-sp"])
    notes = [f"builder_varseqlen.py -sp log: {short_log_line(line)}" for line in sparse_log.splitlines()
             if "sparse" in line.lower() and "Saving Engine" not in line]
    dense = perf("perf_varseqlen.py", dense_path, seq, batches, setup, ["--squad-lengths"])
    sparse = perf("perf_varseqlen.py", sparse_path, seq, batches, setup, ["--squad-lengths"])
    check_batch = min(8, max(batches))
    difference = float(np.abs(packed_logits(dense_path, seq, setup.device, check_batch)
                              - packed_logits(sparse_path, seq, setup.device, check_batch)).max())
    rows = []
    table = ["| batch (SQuAD mix) | without -sp ms | seq/s | with -sp ms | seq/s | -sp speed-up |", "|---|---|---|---|---|---|"]
    for batch in batches:
        d, s = by_batch(dense)[batch], by_batch(sparse)[batch]
        rows.append(dict(batch=batch, dense_ms=d["avg_ms"], dense_seq_per_s=d["sequences_per_second"],
                         sparse_ms=s["avg_ms"], sparse_seq_per_s=s["sequences_per_second"]))
        table.append(f"| {batch} | {d['avg_ms']:.2f} | {d['sequences_per_second']:.0f} | {s['avg_ms']:.2f} | "
                     f"{s['sequences_per_second']:.0f} | {s['sequences_per_second'] / d['sequences_per_second']:.2f}× |")
    best = max(r["sparse_seq_per_s"] / r["dense_seq_per_s"] for r in rows)
    notes.append(f"largest -sp speed-up: {best:.2f}×" + (" (none: the GEMMs ran dense)" if best < 1.05 else ""))
    tolerance = 2e-2 if setup.float_flags else 1e-4
    notes.append(f"max |Δlogits| between the engines with and without -sp on {check_batch} packed SQuAD-like sequences: "
                 f"{difference:.3g} (tolerance {tolerance:g})")
    memory = ["| engine | engine file MiB | peak GPU MiB (perf run) |", "|---|---|---|",
              f"| packed 2:4-pruned, without -sp | {memory_cells(dense)} |",
              f"| packed 2:4-pruned, with -sp | {memory_cells(sparse)} |"]
    return {"title": f"2:4-pruned model with and without -sp, {setup.float_name.upper()}, S={seq}",
            "passed": difference <= tolerance, "rows": rows, "max_logit_difference": difference,
            "table": "\n".join(table), "memory_table": "\n".join(memory), "reports": [dense, sparse], "notes": notes}


def builder_offers(option: str) -> bool:
    return option in builder.build_parser().format_help()


def section_int8(ws: Workspace) -> dict:
    """FP16 vs INT8 (vs FP8) speed at 128/384 × 1/32/128, and agreement with FP32."""
    setup = ws.setup
    precisions = ["float", "int8"] + (["fp8"] if builder_offers("--fp8") else [])
    names = {"float": setup.float_name.upper(), "int8": "INT8", "fp8": "FP8"}
    notes = [f"INT8/FP8 engines: builder.py {' '.join([*setup.float_flags, *setup.int8_flags])} "
             "(scripts/inference_benchmark.sh's Ampere+ flags; -imh/-iln on GPUs only), PTQ on the 20 questions of bench/int8_accuracy.py's "
             "hand-made SQuAD set (-n 20)"]
    if "fp8" not in precisions:
        notes.append("FP8 not measured: builder.py has no --fp8 option")
    reports: dict[str, dict[int, dict]] = {}
    errors: dict[str, str] = {}
    for precision in precisions:
        try:
            engine = ws.padded_engine(precision)
            reports[precision] = {seq: perf("perf.py", engine, seq, setup.batches, setup) for seq in setup.seq_lengths}
        except Exception as error:  # one precision failing still leaves the others' figures
            errors[precision] = f"{type(error).__name__}: {last_line(str(error))}"
            notes.append(f"{names[precision]} failed: {errors[precision]}")
            traceback.print_exc()
    rows = []
    head = ["S", "batch"] + [f"{names[p]} ms / seq/s" for p in precisions] + [f"INT8 / {names['float']}"]
    head += [f"FP8 / {names['float']}"] if "fp8" in precisions else []
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seq in setup.seq_lengths:
        for batch in setup.batches:
            row: dict[str, Any] = dict(seq=seq, batch=batch)
            cells = [str(seq), str(batch)]
            for precision in precisions:
                result = reports.get(precision, {}).get(seq)
                entry = by_batch(result)[batch] if result else None
                row[precision] = None if entry is None else dict(avg_ms=entry["avg_ms"], p99_ms=entry["p99_ms"],
                                                                   seq_per_s=entry["sequences_per_second"])
                cells.append("—" if entry is None else f"{entry['avg_ms']:.3f} / {entry['sequences_per_second']:.0f}")
            for precision in precisions[1:]:
                if row["float"] and row[precision]:
                    row[f"{precision}_speedup"] = row[precision]["seq_per_s"] / row["float"]["seq_per_s"]
                    cells.append(f"{row[f'{precision}_speedup']:.2f}×")
                else:
                    cells.append("—")
            rows.append(row)
            table.append("| " + " | ".join(cells) + " |")
    goal_rows = [r for r in rows if r["batch"] == max(setup.batches) and "int8_speedup" in r]
    goal_met = bool(goal_rows) and all(r["int8_speedup"] >= INT8_GOAL for r in goal_rows)
    memory = ["| engine | S | engine file MiB | peak GPU MiB (perf run) |", "|---|---|---|---|"]
    for precision, per_seq in reports.items():
        for seq, report in per_seq.items():
            memory.append(f"| {names[precision]} padded, b≤{max(setup.batches)} | {seq} | {memory_cells(report)} |")

    accuracy = ["| engine vs FP32 engine | S | cosine of logits | argmax start | argmax end | both | features |",
                "|---|---|---|---|---|---|---|"]
    agreements = []
    try:
        reference_engine = ws.padded_engine("fp32")
        for seq in (s for s in setup.seq_lengths if s >= ACCURACY_MIN_SEQ):
            features = handmade_features(ws.vocab(), seq)
            reference = run_engine(reference_engine, features.inputs(), setup.device, setup.accuracy_batch)
            for precision in precisions:
                if precision in errors:
                    continue
                candidate = run_engine(ws.padded_engine(precision), features.inputs(), setup.device, setup.accuracy_batch)
                agreement = logits_agreement(reference, candidate, features.input_mask)
                free_gpu_memory()
                agreements.append(dict(precision=names[precision], seq=seq, **agreement.__dict__))
                accuracy.append(f"| {names[precision]} | {seq} | {agreement.cosine:.5f} | {100 * agreement.start_match:.0f}% | "
                                f"{100 * agreement.end_match:.0f}% | {100 * agreement.both_match:.0f}% | {agreement.features} |")
    except Exception as error:
        notes.append(f"accuracy check failed: {type(error).__name__}: {last_line(str(error))}")
        traceback.print_exc()
    int8_accurate = [a for a in agreements if a["precision"] == "INT8"]
    accuracy_met = bool(int8_accurate) and all(a["cosine"] >= 0.99 and a["both_match"] >= 0.95 for a in int8_accurate)
    notes.append(f"goal INT8 ≥ {INT8_GOAL}× {names['float']} seq/s at batch {max(setup.batches)}: "
                 f"{'met' if goal_met else 'MISSED'}; goal cosine ≥ 0.99 and argmax ≥ 95%: "
                 f"{'met' if accuracy_met else 'MISSED'}")
    return {"title": f"{names['float']} vs INT8" + (" vs FP8" if "fp8" in precisions else "")
            + ", padded engines, CUDA graphs", "passed": goal_met and accuracy_met and not errors,
            "rows": rows, "agreements": agreements, "table": "\n".join(table), "memory_table": "\n".join(memory),
            "accuracy_table": "\n".join(accuracy), "notes": notes}


def section_inference_c(ws: Workspace) -> dict:
    """inference_c.py --enable-graph prints what inference.py prints (timings masked)."""
    setup = ws.setup
    folder = ws.once("tiny_qa", lambda path: write_tiny_qa_model(path, seed=1234), "tiny_qa")
    engine = ws.once("tiny_engine", lambda path: build("builder.py", [
        "--hf", str(folder), "--backend", "portable", "--device", setup.device, "-o", str(path), "-b", "1", "-s", "128"]),
        "tiny.engine")
    args = ["-e", str(engine), "-v", str(folder / "vocab.txt"), "-s", "128", "--device", setup.device,
            "-p", *PASSAGE.split(" "), "-q", *QUESTION.split(" ")]
    python_status, python_out, python_err = call_main(inference.main, args)
    c_status, c_out, c_err = call_main(inference_c.main, [*args, "--enable-graph"])
    same = python_status == 0 and c_status == 0 and TIMING_LINE.sub(r"\1<t>", python_out) == TIMING_LINE.sub(r"\1<t>", c_out)
    notes = [f"model: helpers.demo_model's tiny random 2-layer BERT (seed 1234), FP32 engine -b 1 -s 128; "
             f"device: {setup.device}; inference.py exit {python_status}, inference_c.py --enable-graph exit {c_status}; "
             f"outputs identical apart from timings: {'yes' if same else 'NO'}"]
    if not same:
        notes.append(f"stderr: {last_line(python_err)} / {last_line(c_err)}")
    return {"title": "inference_c.py --enable-graph vs inference.py (tiny portable engine)", "passed": same,
            "inference_py": python_out, "inference_c_py": c_out, "notes": notes}


def profile_engine(engine: Path, batch: int, seq: int, inputs: dict[str, np.ndarray], device: str,
                   total_tokens: int | None = None) -> dict:
    """Graph-replay median (bench.timing) and, on CUDA, device time per kernel category of one
    eager forward (bench.compare.profile_kernels)."""
    runner = EngineRunner(engine, device=device, enable_graph=device == "cuda")
    runner.activate(batch, seq, total_tokens)
    runner.copy_inputs(inputs)
    runner.synchronize()
    if device != "cuda":
        times = runner.time_executions(1, 3)
        del runner
        return {"graph_ms": None, "eager_ms": float(np.median(times)), "kernel_ms": None, "category_ms": {}, "top_kernels": []}
    with torch.cuda.stream(runner.stream):
        graph = time_cuda(runner.execute, warmup=5, iterations=30)
        runner.enable_graph = False
        profile = profile_kernels(runner.execute, iterations=2)
    del runner
    free_gpu_memory()
    return {"graph_ms": graph.median_ms, "eager_ms": None, **profile}


def section_profile(ws: Workspace) -> dict:
    """Where the time goes: the FP16, INT8 (flag by flag) and FP8 padded engines at one shape, and
    the packed FP16 engine on the SQuAD mix (diagnosis of the packed and INT8 rows)."""
    setup = ws.setup
    batch, seq = setup.packed_batches[0], setup.seq_lengths[0]
    calibration = ["-j", str(ws.squad()), "-v", ws.vocab(), "-n", "20", "-p", str(ws.root / "calib.cache")]
    gpu_only = {"-imh", "-iln"} if setup.device != "cuda" else set()
    variants = {setup.float_name.upper(): [],
                "INT8 -i": ["-i", *calibration], "INT8 -i -imh": ["-i", "-imh", *calibration],
                "INT8 -i -iln": ["-i", "-iln", *calibration],
                "INT8 -i --strict -iln -imh": ["-i", "--strict", "-iln", "-imh", *calibration]}
    if builder_offers("--fp8"):
        variants["FP8 -i --fp8"] = ["-i", "--fp8", *calibration]
    rng = np.random.default_rng(0)
    fixed_inputs = {"input_ids": rng.integers(0, 30522, (batch, seq), dtype=np.int32),
                    "segment_ids": rng.integers(0, 2, (batch, seq), dtype=np.int32),
                    "input_mask": np.ones((batch, seq), np.int32)}
    results: dict[str, dict] = {}
    for name, flags in variants.items():
        if gpu_only & set(flags):
            continue
        engine = ws.root / "profiled.engine"
        build("builder.py", [*ws.common(), "-o", str(engine), *setup.float_flags, *flags, "-b", str(batch), "-s", str(seq)])
        results[f"padded {name}, {seq} × {batch}"] = profile_engine(engine, batch, seq, fixed_inputs, setup.device)
        engine.unlink()
    packed_path, _ = ws.packed_engine("packed_float", ws.model())
    lengths = squad_like_lengths(batch, setup.long_seq, np.random.default_rng((12345, batch)))
    tokens = int(lengths.sum())
    packed_inputs = {"input_ids": rng.integers(0, 30522, tokens, dtype=np.int32), "segment_ids": np.zeros(tokens, np.int32),
                     "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)}
    results[f"packed {setup.float_name.upper()}, SQuAD mix of {batch} ({tokens} tokens, S≤{setup.long_seq})"] = profile_engine(
        packed_path, batch, setup.long_seq, packed_inputs, setup.device, tokens)

    categories = ("gemm", "attention", "layernorm", "gelu", "other")
    table = ["| engine | graph ms | kernels ms | " + " | ".join(categories) + " | largest kernel (µs per forward × calls) |",
             "|---|---|---|" + "---|" * len(categories) + "---|"]
    for name, r in results.items():
        def ms(value: float | None) -> str:
            return "—" if value is None else f"{value:.2f}"
        top = r["top_kernels"][0] if r["top_kernels"] else None
        top_text = f"{top['name'][:60]} ({top['us_per_forward']:.0f} × {top['calls_per_forward']:.0f})" if top else "—"
        table.append(f"| {name} | {ms(r['graph_ms'] if r['graph_ms'] is not None else r['eager_ms'])} | {ms(r['kernel_ms'])} | "
                     + " | ".join(ms(r["category_ms"].get(c)) for c in categories) + f" | {top_text} |")
    notes = ["torch.profiler over eager launches of each engine (bench.compare.profile_kernels, 2 forwards); graph ms: "
             "median of 30 CUDA-graph replays (bench.timing.time_cuda). Categories by kernel name; 'other' is mostly "
             "PyTorch elementwise kernels (casts, quantize/dequantize passes, masking)."]
    if setup.device != "cuda":
        notes.append("CPU: no kernel profile; the graph column holds the eager median of 3 runs, -imh/-iln skipped.")
    return {"title": f"Diagnosis: device time per kernel category, {seq} × {batch}", "passed": True,
            "profiles": results, "table": "\n".join(table), "notes": notes}


SECTION_FUNCTIONS: dict[str, Callable[[Workspace], dict]] = {
    "builder": section_builder, "varseqlen": section_varseqlen, "sparsity": section_sparsity,
    "int8": section_int8, "inference_c": section_inference_c, "profile": section_profile,
}


# ---------------------------------------------------------------------------------------------
# Output


def git_commit() -> str:
    """The checkout's commit (and whether files differ from it), or "unknown" outside a git tree."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + (" + local changes" if dirty.stdout.strip() else "")


def environment(setup: Setup) -> dict:
    import transformers

    return {"commit": git_commit(), "device": torch.cuda.get_device_name() if setup.device == "cuda" else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "model_shape": setup.model_shape, "iterations": setup.iterations, "warm_up": setup.warm_up}


def render_markdown(records: dict) -> str:
    lines = ["# GPU records: correctness, packed vs padded, sparsity, INT8", "",
             "Written by `bench/gpu_records.py` (raw figures: [records.json](records.json)).  Every speed is",
             "perf.py's / perf_varseqlen.py's average over its timed CUDA-graph replays (CUDA events, copies",
             "excluded); sequences/s = batch / average.  The engines are this project's portable engine (no",
             "TensorRT can be installed on the GPU machine), built by builder.py / builder_varseqlen.py.", ""]
    for name in SECTIONS:
        section = records["sections"].get(name)
        if section is None:
            continue
        env = section["environment"]
        model = (f"random BERT {env['model_shape']}; {env['iterations']} timed runs after {env['warm_up']} warm-up"
                 if name in SHARED_MODEL_SECTIONS else "models: see below")
        lines += [f"## {section['title']}", "",
                  f"{env['device']}, {env['date']}, commit {env.get('commit', 'unknown')}, torch {env['torch']}, "
                  f"transformers {env['transformers']}; {model}. "
                  f"Result: **{'ok' if section.get('passed') else 'goal missed or check failed'}**.", ""]
        if "error" in section:
            lines += [f"Failed: `{section['error']}`", ""]
        for key in ("table", "accuracy_table", "memory_table"):
            if section.get(key):
                lines += [section[key], ""]
        for key, label in (("inference_py", "inference.py"), ("inference_c_py", "inference_c.py --enable-graph")):
            if section.get(key):
                lines += [f"{label} printed:", "", "```", section[key].rstrip(), "```", ""]
        lines += [f"* {note}" for note in section.get("notes", [])] + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_records(records: dict, out_dir: Path) -> None:
    write_json_and_markdown(out_dir, "records", records, render_markdown(records))


def load_records(path: Path) -> dict:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise RecordsError(f"cannot read {path}: {error}") from None
    if records.get("format_version") != FORMAT_VERSION:
        raise RecordsError(f"{path} has format_version {records.get('format_version')!r}, expected {FORMAT_VERSION}")
    return records


def run_sections(names: list[str], setup: Setup, out_dir: Path) -> int:
    records: dict[str, Any] = {"format_version": FORMAT_VERSION, "sections": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_records.") as scratch:
        ws = Workspace(Path(scratch), setup)
        for name in names:
            print(f"==== {name} ====", flush=True)
            try:
                section = SECTION_FUNCTIONS[name](ws)
            except Exception as error:  # a failed section is recorded, the others still run
                traceback.print_exc()
                section = {"title": name, "passed": False, "error": f"{type(error).__name__}: {last_line(str(error))}"}
            section["environment"] = environment(setup)
            records["sections"][name] = section
            write_records(records, out_dir)
            print(render_markdown({"sections": {name: section}}), flush=True)
    return 0 if all(s.get("passed") for s in records["sections"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections (default: all): {', '.join(SECTIONS)}")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, to check the script")
    parser.add_argument("--iterations", type=int, default=None, help="timed runs per perf measurement (default: 100)")
    parser.add_argument("--out-dir", default="docs/perf", help="where records.json and records.md go (default: docs/perf)")
    parser.add_argument("--merge", nargs="+", metavar="RECORDS_JSON",
                        help="combine the sections of earlier records.json files (later files win) instead of measuring")
    args = parser.parse_args(argv)
    try:
        if args.merge:
            merged: dict[str, Any] = {"format_version": FORMAT_VERSION, "sections": {}}
            for path in args.merge:
                merged["sections"].update(load_records(Path(path))["sections"])
            write_records(merged, Path(args.out_dir))
            return 0
        names = [n for n in args.only.split(",") if n]
        unknown = [n for n in names if n not in SECTIONS]
        if unknown:
            raise RecordsError(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
        if args.iterations is not None and args.iterations < 20:
            raise RecordsError("--iterations must be at least 20")
        setup = make_setup(args.tiny, args.iterations)
        os.environ["DEMOBERT_DEVICE"] = setup.device
        return run_sections(names, setup, Path(args.out_dir))
    except RecordsError as error:
        print(f"gpu_records.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
