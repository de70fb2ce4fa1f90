#!/usr/bin/env python3
"""Correctness of builder.py engines against HuggingFace on a GPU (BERT-base and BERT-large shapes).

For each shape it makes a seeded random ``BertForQuestionAnswering`` in process, writes it as a
HuggingFace folder, builds FP32 and FP16 engines with ``builder.py --hf``, runs them through
``helpers.runner`` and prints the largest start/end-logit errors against HF computed in float64
on the same device.  Exit status 1 when an error exceeds its tolerance (FP32 1e-4, FP16 2e-2).

``--tiny`` uses small awkward shapes so the script also runs on a CPU (FP16 is then skipped).

Usage: python3 bench/check_builder_gpu.py [--tiny] [--device cuda] [--batch 2] [--seq 128 --seq 384]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import builder  # noqa: E402
from helpers.runner import EngineRunner  # noqa: E402

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
SHAPES = {
    "bert-base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12),
    "bert-large": dict(hidden_size=1024, num_attention_heads=16, intermediate_size=4096, num_hidden_layers=24),
}
TINY_SHAPES = {
    "tiny-h48n3l2": dict(hidden_size=48, num_attention_heads=3, intermediate_size=37, num_hidden_layers=2),
    "tiny-h40n5l1": dict(hidden_size=40, num_attention_heads=5, intermediate_size=37, num_hidden_layers=1),
}


def random_qa_model(shape: dict, vocab_size: int, seed: int):
    """HF's own initialization, plus small noise on LayerNorm and biases so that they matter."""
    from transformers import BertConfig, BertForQuestionAnswering

    config = BertConfig(
        vocab_size=vocab_size,
        max_position_embeddings=512,
        hidden_act="gelu_new",  # the engine's tanh GELU
        architectures=["BertForQuestionAnswering"],
        **shape,
    )
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def random_inputs(batch: int, seq: int, vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq // 2, seq + 1, size=batch)
    lengths[0] = seq
    positions = np.arange(seq)[None, :]
    mask = (positions < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, rng.integers(1, vocab_size, size=(batch, seq)), 0).astype(np.int32)
    segments = ((positions >= lengths[:, None] // 2) & (mask == 1)).astype(np.int32)
    return {"input_ids": ids, "segment_ids": segments, "input_mask": mask}


def reference_logits(model, inputs: dict[str, np.ndarray], device: str) -> np.ndarray:
    reference = model.to(device=device, dtype=torch.float64)
    with torch.no_grad():
        out = reference(
            input_ids=torch.as_tensor(inputs["input_ids"], dtype=torch.long, device=device),
            token_type_ids=torch.as_tensor(inputs["segment_ids"], dtype=torch.long, device=device),
            attention_mask=torch.as_tensor(inputs["input_mask"], dtype=torch.long, device=device),
        )
    logits = torch.stack([out.start_logits, out.end_logits], dim=-1).cpu().numpy()
    model.to(device="cpu", dtype=torch.float32)
    return logits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="small shapes that also run on a CPU")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda, or cpu with --tiny and no GPU)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    parser.add_argument("--seq", type=int, action="append", help="sequence length, repeatable (default: 128 and 384)")
    parser.add_argument("--vocab", type=int, default=30522, help="vocabulary size (default: 30522)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")
    parser.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "portable"),
                        help="builder.py --backend (default: auto)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() or not args.tiny else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device (use --tiny to check the script on a CPU)", file=sys.stderr)
        return 1
    seqs = args.seq or [128, 384]
    os.environ["DEMOBERT_DEVICE"] = device
    shapes = TINY_SHAPES if args.tiny else SHAPES
    precisions = ["fp32", "fp16"] if device.startswith("cuda") else ["fp32"]

    rows = []
    with tempfile.TemporaryDirectory(prefix="check_builder_gpu.") as work:
        for index, (name, shape) in enumerate(shapes.items()):
            model = random_qa_model(shape, args.vocab, args.seed + index)
            folder = Path(work) / name
            model.save_pretrained(folder)
            for precision in precisions:
                engine = Path(work) / f"{name}_{precision}.engine"
                argv_build = ["--hf", str(folder), "-o", str(engine), "-b", str(args.batch), "--backend", args.backend]
                argv_build += [item for seq in seqs for item in ("-s", str(seq))]
                if precision == "fp16":
                    argv_build.append("-f")
                if builder.main(argv_build) != 0:
                    rows.append((name, precision, args.batch, "-", float("nan"), float("nan"), float("nan"), "BUILD FAILED"))
                    continue
                runner = EngineRunner(engine, device=device)
                for seq in seqs:
                    inputs = random_inputs(args.batch, seq, args.vocab, args.seed + seq)
                    runner.activate(args.batch, seq)
                    got = runner.infer(inputs).reshape(args.batch, seq, 2)
                    expected = reference_logits(model, inputs, device)
                    error = np.abs(got - expected)
                    verdict = "ok" if error.max() <= TOLERANCE[precision] else "FAIL"
                    scale = float(np.abs(expected).max())
                    rows.append((name, precision, args.batch, seq, scale, float(error.max()), float(error.mean()), verdict))
                del runner

    device_name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
    print(f"\nbuilder.py engines vs HF BertForQuestionAnswering (float64), device: {device_name}")
    print("| model | precision | batch | seq | max abs logit | max abs err | mean abs err | tolerance | result |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, precision, batch, seq, scale, worst, mean, verdict in rows:
        print(f"| {name} | {precision} | {batch} | {seq} | {scale:.3g} | {worst:.3e} | {mean:.3e} "
              f"| {TOLERANCE[precision]:.0e} | {verdict} |")
    if not device.startswith("cuda"):
        print("FP16 skipped: FP16 engines run on CUDA only.")
    return 0 if all(row[-1] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
