#!/usr/bin/env python3
"""BERT-large and RoBERTa-large shapes through builder.py --hf, timed in the same run (FP16, fixed length).

Both models are seeded random ``*ForQuestionAnswering`` folders of the large shape (24 layers,
hidden 1024, 16 heads, intermediate 4096; RoBERTa with its 50265-entry vocabulary, 514 positions
and one token type).  Each is built with ``builder.py --hf --fp16 -b 1 -b 128 -s 384`` and timed
with ``helpers.latency`` (the one timing loop of perf.py), alternating the two engines per round so
that drift on the GPU lands on both.  The network is BERT's in both, so the rows should agree
within noise; ``--gelu`` picks the activation written into both configs (``gelu`` is HF's exact
form, which the builders emit as one GELU_ERF layer; ``gelu_new`` the tanh chain).

Usage: python3 -m bench.family_speed [--device cuda] [--rounds 3] [--gelu gelu] [--json FILE] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForQuestionAnswering, RobertaConfig, RobertaForQuestionAnswering

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import builder  # noqa: E402
from helpers.latency import benchmark  # noqa: E402
from helpers.runner import EngineRunner  # noqa: E402

LARGE = dict(hidden_size=1024, num_attention_heads=16, intermediate_size=4096, num_hidden_layers=24)
TINY = dict(hidden_size=48, num_attention_heads=3, intermediate_size=37, num_hidden_layers=2)
BATCHES, SEQ = (1, 128), 384


def write_models(work: Path, gelu: str, shape: dict) -> dict[str, Path]:
    folders = {}
    for name, config, model_class in (
        ("bert", BertConfig(vocab_size=30522, max_position_embeddings=512, **shape), BertForQuestionAnswering),
        ("roberta", RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                                  **shape), RobertaForQuestionAnswering),
    ):
        config.hidden_act = gelu
        torch.manual_seed(0)
        model_class(config).half().save_pretrained(work / name)
        folders[name] = work / name
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="portable engine device (default: cuda)")
    parser.add_argument("--backend", default="portable", choices=("portable", "tensorrt"), help="(default: portable)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds per engine (default: 3)")
    parser.add_argument("--iterations", type=int, default=200, help="timed runs per batch size and round (default: 200)")
    parser.add_argument("--gelu", default="gelu", choices=("gelu", "gelu_new"), help="hidden_act of both (default: gelu)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--tiny", action="store_true", help="2-layer models, to check the script on a CPU")
    args = parser.parse_args(argv)
    os.environ["DEMOBERT_DEVICE"] = args.device
    rows: dict[tuple[str, int], list[float]] = {}  # (model, batch) → mean ms of each round
    with tempfile.TemporaryDirectory(prefix="family_speed.") as work:
        engines = {}
        for name, folder in write_models(Path(work), args.gelu, TINY if args.tiny else LARGE).items():
            engines[name] = Path(work) / f"{name}.engine"
            build = ["--hf", str(folder), "-o", str(engines[name]), "--fp16", "-s", str(SEQ), "--backend", args.backend,
                     *[item for batch in BATCHES for item in ("-b", str(batch))]]
            if builder.main(build) != 0:
                return 1
        runners = {name: EngineRunner(path, device=args.device, enable_graph=True) for name, path in engines.items()}
        for _ in range(args.rounds):
            for name, runner in runners.items():
                for summary in benchmark(runner, list(BATCHES), SEQ, 10, args.iterations, 0.0, seed=12345):
                    rows.setdefault((name, summary.batch_size), []).append(summary.avg_ms)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    shape = "tiny" if args.tiny else "large"
    print(f"| {shape} model (FP16, {args.gelu}, {device}) | batch × seq | mean of rounds, ms | rounds, ms |")
    print("|---|---|---|---|")
    for (name, batch), times in rows.items():
        print(f"| {name} | {batch} × {SEQ} | {sum(times) / len(times):.3f} | {', '.join(f'{t:.3f}' for t in times)} |")
    if args.json:
        Path(args.json).write_text(json.dumps([{"model": n, "batch": b, "seq": SEQ, "avg_ms": t, "device": device}
                                               for (n, b), t in rows.items()], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
