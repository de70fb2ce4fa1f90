"""Small-batch attention on the packed QKV layout: the Triton kernel (``attention_small``) against
cuDNN SDPA (``attention_fixed_sdpa``), BERT-large (16 × 64) and base (12 × 64), S = 128 and 384.

Run on the GPU machine from the repository root:
``python -m bench.attention_small_bench [--batches 1 2 4 8] [--sweep]``.  Every shape is first
checked against the reference math (``helpers.portable.ops.attention_fixed``), then timed as 10
calls captured in one CUDA graph (median of 100 replays, µs per call), PDL off.  Prints a Markdown
table as it goes (with the path ``attention_fixed_biased`` ships for the shape), then the smallest
batch at which cuDNN wins; ``--sweep`` also times the Triton tile candidates (padded mask): the data
behind ``attention_small.default_tiles`` and the routing rule in ``attention.py`` (numbers in
docs/perf/KERNELS.md).
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench.kernels_bench import max_error
from bench.timing import time_graphed
from helpers.portable import ops
from helpers.portable.kernels.attention import attention_fixed_sdpa, key_padding_bias, uses_small_kernel
from helpers.portable.kernels.attention_small import Tiles, attention_small, default_tiles

MODELS = {"large": 16, "base": 12}  # heads of 64
HEAD_SIZE = 64
SEQ_LENS = (128, 384)
MASKS = ("full", "padded")
TOLERANCE = 1e-2
SWEEP_TILES = [Tiles(m, n, w, s) for m, n, w, s in (
    (16, 64, 4, 1), (16, 128, 4, 1), (16, 64, 2, 1), (16, 128, 2, 1), (16, 128, 4, 2), (32, 64, 4, 1),
    (32, 128, 4, 1), (32, 128, 4, 2), (64, 64, 4, 1), (64, 128, 4, 2),
)]


def attention_inputs(seq: int, batch: int, heads: int, mask: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed QKV [S, B, 3E], valid key counts (all S, or ≥ S/2 with the first sequence full) and
    the additive key bias the engine builds from them."""
    qkv = torch.randn(seq, batch, 3 * heads * HEAD_SIZE, device="cuda").half()
    lengths = torch.full((batch,), seq, dtype=torch.int32, device="cuda")
    if mask == "padded":
        lengths = torch.randint(seq // 2, seq + 1, (batch,), dtype=torch.int32, device="cuda")
        lengths[0] = seq
    return qkv, lengths, key_padding_bias(lengths, seq, torch.float16)


def checked(name: str, got: torch.Tensor, expected: torch.Tensor, failures: list[str]) -> None:
    error = max_error(expected, got)
    if not error <= TOLERANCE:
        print(f"check {name}: max|err| {error:.3g} > {TOLERANCE:g} FAIL", flush=True)
        failures.append(name)


def compare(batches: list[int], failures: list[str]) -> None:
    print("| model | S | B | mask | cuDNN SDPA µs | Triton µs | cuDNN / Triton | shipped |", flush=True)
    print("|---|---|---|---|---|---|---|---|", flush=True)
    crossovers: list[str] = []
    for model, heads in MODELS.items():
        for seq in SEQ_LENS:
            for mask in MASKS:
                crossover = None
                for batch in batches:
                    qkv, lengths, bias = attention_inputs(seq, batch, heads, mask)
                    expected = ops.attention_fixed(qkv, lengths, heads)
                    name = f"{model} S={seq} B={batch} {mask}"
                    checked(f"cuDNN {name}", attention_fixed_sdpa(qkv, bias, heads), expected, failures)
                    checked(f"Triton {name}", attention_small(qkv, bias, heads, use_pdl=False), expected, failures)
                    shipped = "Triton" if uses_small_kernel(qkv, bias, heads) else "cuDNN"
                    cudnn = time_graphed(lambda: attention_fixed_sdpa(qkv, bias, heads)).median_ms * 1e3
                    triton_us = time_graphed(lambda: attention_small(qkv, bias, heads, use_pdl=False)).median_ms * 1e3
                    print(f"| {model} | {seq} | {batch} | {mask} | {cudnn:.2f} | {triton_us:.2f} | "
                          f"{cudnn / triton_us:.2f} | {shipped} |", flush=True)
                    if crossover is None and cudnn <= triton_us:
                        crossover = batch
                crossovers.append(f"{model} S={seq} {mask}: cuDNN wins from B = {crossover}" if crossover
                                  else f"{model} S={seq} {mask}: Triton wins up to B = {batches[-1]}")
    print("\nCrossover:", *crossovers, sep="\n- ", flush=True)


def sweep(batches: list[int], failures: list[str]) -> None:
    sm_count = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    print("\n| model | S | B | default | " + " | ".join(f"{t.block_m}×{t.block_n} w{t.warps} s{t.stages}"
                                                    for t in SWEEP_TILES) + " |", flush=True)
    print("|---" * (4 + len(SWEEP_TILES)) + "|", flush=True)
    for model, heads in MODELS.items():
        for seq in SEQ_LENS:
            for batch in batches:
                qkv, lengths, bias = attention_inputs(seq, batch, heads, "padded")
                expected = ops.attention_fixed(qkv, lengths, heads)
                default = default_tiles(seq, batch * heads, sm_count)
                cells = []
                for tiles in SWEEP_TILES:
                    checked(f"{tiles} {model} S={seq} B={batch}", attention_small(qkv, bias, heads, tiles, False),
                            expected, failures)
                    us = time_graphed(lambda: attention_small(qkv, bias, heads, tiles, False)).median_ms * 1e3
                    cells.append(f"{us:.2f}")
                print(f"| {model} | {seq} | {batch} | {default.block_m}×{default.block_n} w{default.warps} "
                      f"s{default.stages} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--sweep", action="store_true", help="also time the Triton tile candidates")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("attention_small_bench: needs a CUDA GPU")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    failures: list[str] = []
    compare(args.batches, failures)
    if args.sweep:
        sweep([b for b in args.batches if b <= 16], failures)
    if failures:
        sys.exit(f"attention_small_bench: {len(failures)} checks failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()
