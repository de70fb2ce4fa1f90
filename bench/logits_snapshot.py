#!/usr/bin/env python3
"""The logits of tiny fixed-length, packed and INT8/FP8 engines, saved to an .npz for exact comparison.

Every engine is built on the CPU from one seeded random BERT (so the engine files, calibration
ranges included, are the same whatever device runs them), then run on ``--device`` over seeded
inputs at two sizes: a batch inside the batch-1 row range of the CUDA fast path (≤ 128 token
rows) and a larger one.  Two snapshots of two source trees are bit-identical when ``--compare``
finds every array equal to the last bit.

    python3 bench/logits_snapshot.py --device cpu --out /tmp/before.npz
    python3 bench/logits_snapshot.py --device cuda --out /tmp/after.npz
    python3 bench/logits_snapshot.py --compare /tmp/before.npz /tmp/after.npz

On CUDA, the tuned cuBLASLt GEMMs pick each shape's algorithm by timing in every process, so two
FP16 runs can differ by the choice alone; ``DEMOBERT_CUBLASLT=0`` in both runs takes the choice out.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import builder  # noqa: E402
import builder_varseqlen  # noqa: E402
from bench.int8_accuracy import write_handmade_squad  # noqa: E402
from helpers.demo_model import minilm_folder, write_tiny_qa_model  # noqa: E402
from helpers.runner import EngineRunner  # noqa: E402

SEQ = 128
BATCH = 4
MODEL_SIZES = {"hidden": 64, "layers": 2, "heads": 4, "intermediate": 128, "max_positions": SEQ}
CALIBRATION_QUESTIONS = 12
# (name, builder script, options): every kind of engine the portable runtime lowers differently.
ENGINES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("fixed_fp32", "builder", ()),
    ("fixed_fp16", "builder", ("--fp16",)),
    ("packed_fp32", "builder_varseqlen", ()),
    ("packed_fp16", "builder_varseqlen", ("--fp16",)),
    ("int8", "builder", ("--int8",)),
    ("int8_fp16", "builder", ("--fp16", "--int8")),
    ("int8_fp16_imh_iln", "builder", ("--fp16", "--int8", "-imh", "-iln")),
    ("int8_fp16_strict", "builder", ("--fp16", "--int8", "--strict")),
    ("fp8_fp16", "builder", ("--fp16", "--int8", "--fp8")),
)
# Valid lengths of the sequences of each case: one sequence of 100 tokens, and four of mixed lengths.
CASES = {"one": [100], "four": [SEQ, 77, 5, 100]}


def build(script: str, model: Path, engine: Path, options: Sequence[str], squad: str, vocab: str, cache: Path) -> None:
    """Build one engine on the CPU; INT8 builds share one calibration cache."""
    main = builder.main if script == "builder" else builder_varseqlen.main
    argv = ["--hf", str(model), "-o", str(engine), "-b", "1", "-b", str(BATCH), "-s", str(SEQ),
            "--backend", "portable", "--device", "cpu", *options]
    if "--int8" in options:
        argv += ["-j", squad, "-v", vocab, "-n", str(CALIBRATION_QUESTIONS), "-p", str(cache)]
    saved = os.environ.get("DEMOBERT_DEVICE")
    stderr = io.StringIO()
    # -imh / -iln are refused by builder.py where no GPU of compute capability 7.5+ runs the engine;
    # the portable engine computes them on any device.
    original_capability = builder.compute_capability
    builder.compute_capability = lambda backend: 90
    try:
        with contextlib.redirect_stderr(stderr):
            status = main(argv)
    finally:
        builder.compute_capability = original_capability
        if saved is None:
            os.environ.pop("DEMOBERT_DEVICE", None)
        else:
            os.environ["DEMOBERT_DEVICE"] = saved
    if status != 0:
        raise SystemExit(f"error: {script}.py {' '.join(options)} failed: {stderr.getvalue().strip()}")


def fixed_inputs(lengths: list[int], vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = len(lengths)
    mask = (np.arange(SEQ)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    segments = (np.arange(SEQ)[None, :] >= (np.array(lengths) // 2)[:, None]).astype(np.int32) * mask
    return {"input_ids": rng.integers(0, vocab, size=(batch, SEQ), dtype=np.int32) * mask,
            "segment_ids": segments, "input_mask": mask}


def packed_inputs(lengths: list[int], vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(0, vocab, size=sum(lengths), dtype=np.int32),
        "segment_ids": np.concatenate([(np.arange(n) >= n // 2).astype(np.int32) for n in lengths]),
        "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
    }


def run(engine: Path, device: str, vocab: int) -> dict[str, np.ndarray]:
    """``logits_out`` of every case, as the runner returns it."""
    runner = EngineRunner(engine, device=device)
    results = {}
    for seed, (case, lengths) in enumerate(CASES.items()):
        if runner.varseqlen:
            runner.activate(len(lengths), SEQ, total_tokens=sum(lengths))
            results[case] = runner.infer(packed_inputs(lengths, vocab, seed)).copy()
        else:
            runner.activate(len(lengths), SEQ)
            results[case] = runner.infer(fixed_inputs(lengths, vocab, seed)).copy()
    return results


def snapshot(device: str, out: Path, names: Sequence[str]) -> None:
    vocab = str(minilm_folder() / "vocab.txt")
    vocab_size = sum(1 for _ in open(vocab, encoding="utf-8"))
    arrays: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="logits-snapshot-") as folder:
        work = Path(folder)
        model = write_tiny_qa_model(work / "hf", seed=17, **MODEL_SIZES)
        squad = write_handmade_squad(work / "squad.json")
        for name, script, options in ENGINES:
            if names and name not in names:
                continue
            engine = work / f"{name}.engine"
            build(script, model, engine, options, squad, vocab, work / "calibration.cache")
            for case, logits in run(engine, device, vocab_size).items():
                arrays[f"{name}/{case}"] = logits
                print(f"{name}/{case}: {logits.shape} {logits.dtype}, |x| mean {np.abs(logits).mean():.6f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    print(f"Wrote {len(arrays)} arrays to {out}")


def compare(first: Path, second: Path) -> int:
    """0 when both files hold the same arrays with the same bits, else 1 (the differences printed)."""
    a, b = np.load(first), np.load(second)
    differing = 0
    for key in sorted(set(a.files) | set(b.files)):
        if key not in a.files or key not in b.files:
            print(f"{key}: only in {first if key in a.files else second}")
            differing += 1
            continue
        x, y = a[key], b[key]
        same = x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        if same:
            print(f"{key}: bit-identical")
        else:
            differing += 1
            detail = (f"max |difference| {np.abs(x.astype(np.float64) - y.astype(np.float64)).max():.3g}"
                      if x.shape == y.shape else f"shapes {x.shape} vs {y.shape}")
            print(f"{key}: DIFFERENT ({detail})")
    print("all arrays bit-identical" if differing == 0 else f"{differing} array(s) differ")
    return 0 if differing == 0 else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="device the engines run on: cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, help="the .npz to write")
    parser.add_argument("--engines", default="", help="comma-separated subset of: " + ", ".join(n for n, _, _ in ENGINES))
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("FIRST", "SECOND"), help="compare two snapshots")
    args = parser.parse_args(argv)
    if args.compare is None and args.out is None:
        parser.error("give --out (take a snapshot) or --compare (compare two)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare is not None:
        return compare(*args.compare)
    snapshot(args.device, args.out, [n for n in args.engines.split(",") if n])
    return 0


if __name__ == "__main__":
    sys.exit(main())
