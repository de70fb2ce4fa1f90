"""FP16 vs INT8 vs FP8 portable engines on the GPU, BERT-large, batch 128, S = 128 / 384.

Builds the three fixed-length engines from one random BERT-large (INT8 with
scripts/inference_benchmark.sh's ``-i --strict -iln -imh``, PTQ on the hand-made SQuAD set of
bench/int8_accuracy.py; FP8 ``--fp8 --strict -iln -imh``, which is ``-i`` with FP8 GEMMs), times
CUDA-graph replays (bench.timing), reads each run's peak GPU memory, and profiles one eager forward
per engine at the first length (device time per kernel category and the largest kernels,
bench.compare.profile_kernels).  Prints one JSON
line per measurement and writes them all to ``--out``.

``--gemm-rows M`` (repeatable) first times BERT-large's four encoder GEMMs alone at M rows: FP16
``F.linear`` (cuBLAS), ``torch._int_mm`` alone and followed by a PyTorch dequantize + bias (the
INT8 path before the fused kernel, whose own dequantize pass sat between those two), and the fused
Triton INT8 GEMM (float output, and the epilogue the engine runs: GELU, int8 codes); then FP8:
``torch._scaled_mm`` with the bias in cuBLASLt's epilogue (FP16 output) against the same Triton
GEMM on E4M3 operands (FP16 output, and the epilogue the FP8 engine runs: GELU and E4M3 codes for
FC1, int8 codes for the others).
``--sustained SECONDS`` times, after everything else, the FC1-shaped GEMM (16384 × 4096 × 1024) back
to back for that long in FP16 (cuBLAS) and then in INT8 (the Triton kernel, float output), printing
each rate as it is measured: the rates the card holds at its power cap, whose ratio bounds what the
INT8 engine's GEMMs can gain (about 2 × SECONDS + 10 s).
``--layernorm`` times the INT8 skip-LayerNorm alone (int8 codes in and out, BERT-large's width, at
the token counts of batch 128 × 128 / 384) for each (rows per program, warps) of
``LAYERNORM_CANDIDATES``.
``--attention`` times the ``-imh`` attention alone (BERT-large's 16 heads of 64, batch 128, S = 128
and 384, codes in and out) for each of ``ATTENTION_CANDIDATES``, next to FP16 attention (the FP16
engine's: SDPA) on the same shapes.
``--no-engines`` skips the engines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.check_builder_gpu import SHAPES
from bench.compare import profile_kernels
from bench.engine_workspace import Setup, Workspace, build, free_gpu_memory
from bench.timing import sustained_rate, time_cuda, time_graphed
from helpers.files import write_text_atomically
from helpers.portable import kernels
from helpers.runner import EngineRunner

VARIANTS = {"fp16": ["-f"], "int8": ["-f", "-i", "--strict", "-iln", "-imh"],
            "fp8": ["-f", "--fp8", "--strict", "-iln", "-imh"]}


def fixed_inputs(batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(0, 30522, (batch, seq), dtype=np.int32),
            "segment_ids": rng.integers(0, 2, (batch, seq), dtype=np.int32),
            "input_mask": np.ones((batch, seq), np.int32)}


# (name, N, K, GELU, what the INT8 engine writes: int8 codes for -imh attention, the next GEMM or the
# skip-LayerNorm) of one BERT-large encoder layer's GEMMs, all with a bias.
BERT_LARGE_GEMMS = (("QKV", 3072, 1024, False, torch.int8), ("attention out", 1024, 1024, False, torch.int8),
                    ("FC1 + GELU", 4096, 1024, True, torch.int8), ("FC2", 1024, 4096, False, torch.int8))


def gemm_operands(rows: int, n: int, k: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One GEMM's random operands on ``gen``'s device, in each precision: FP16 ``x`` [rows, k] and
    ``weight`` [n, k]; int8 ``codes`` and ``weight_codes`` with per-column ``col_scales``; their E4M3
    counterparts ``fp8_codes`` and ``fp8_weight_codes``; the float32 ``bias`` and its FP16 copy
    ``bias16``."""
    device = gen.device
    x = torch.randn(rows, k, device=device, generator=gen).half()
    weight = (torch.randn(n, k, device=device, generator=gen) / 32).half()
    bias = torch.randn(n, device=device, generator=gen)
    codes = torch.randint(-128, 128, (rows, k), device=device, generator=gen, dtype=torch.int8)
    weight_codes = torch.randint(-127, 128, (n, k), device=device, generator=gen, dtype=torch.int8)
    col_scales = torch.rand(n, device=device, generator=gen) * 1e-5
    fp8_codes, fp8_weight_codes = ((torch.randn(r, k, device=device, generator=gen) * 64).clamp(-448, 448)
                                   .to(torch.float8_e4m3fn) for r in (rows, n))
    return {"x": x, "weight": weight, "bias": bias, "bias16": bias.half(), "codes": codes,
            "weight_codes": weight_codes, "col_scales": col_scales, "fp8_codes": fp8_codes,
            "fp8_weight_codes": fp8_weight_codes}


def tera_ops_per_s(rows: int, n: int, k: int, ms: float) -> float:
    return 2.0 * rows * n * k / (ms * 1e-3) / 1e12


def time_gemms(rows: int) -> list[dict]:
    """One record per GEMM at ``rows``: µs (CUDA-graph replays) and TOPS of each variant
    (``fused_engine`` / ``fp8_triton_engine``: the Triton kernel with the epilogue the INT8 / FP8
    engine runs), the fused kernel's largest deviation from ``_int_mm`` + dequantize (float32
    rounding only: both are the exact integer product), and the FP8 Triton GEMM's from
    ``_scaled_mm`` (the tensor cores' in-block sums)."""
    from helpers.portable.kernels.int8_gemm import int8_gemm_into

    gen = torch.Generator(device="cuda").manual_seed(0)
    records = []
    for name, n, k, gelu, engine_out in BERT_LARGE_GEMMS:
        operands = gemm_operands(rows, n, k, gen)
        x, weight, bias, bias16 = operands["x"], operands["weight"], operands["bias"], operands["bias16"]
        codes, weight_codes, col_scales = operands["codes"], operands["weight_codes"], operands["col_scales"]
        out = torch.empty(rows, n, dtype=torch.float16, device="cuda")
        out_engine = torch.empty(rows, n, dtype=engine_out, device="cuda")
        fp8_codes, fp8_weight_codes = operands["fp8_codes"], operands["fp8_weight_codes"]
        fp8_out = torch.empty(rows, n, dtype=torch.float16, device="cuda")
        # The FP8 engine's GEMMs write what their readers take: E4M3 codes for FC2, int8 codes for
        # -imh attention and the -iln skip-LayerNorms.
        fp8_engine_out = torch.empty(rows, n, dtype=torch.float8_e4m3fn if gelu else engine_out, device="cuda")
        unit = torch.tensor(1e-3, device="cuda")
        fp8_col_scales = torch.full((n,), 1e-6, device="cuda")

        def scaled_mm() -> torch.Tensor:
            return torch._scaled_mm(fp8_codes, fp8_weight_codes.t(), scale_a=unit, scale_b=unit, bias=bias16,
                                    out_dtype=torch.float16)

        variants = {
            "fp16_cublas": lambda: F.linear(x, weight, bias16),
            "int_mm": lambda: torch._int_mm(codes, weight_codes.t()),
            "int_mm_dequant": lambda: torch.addcmul(bias, torch._int_mm(codes, weight_codes.t()), col_scales).half(),
            "fused_float": lambda: int8_gemm_into(out, codes, weight_codes, col_scales, bias),
            "fused_engine": lambda: int8_gemm_into(out_engine, codes, weight_codes, col_scales, bias, gelu=gelu,
                                                   out_scale=0.05, value_dtype=torch.float16),
            "fp8_scaled_mm": scaled_mm,
            "fp8_triton_float": lambda: int8_gemm_into(fp8_out, fp8_codes, fp8_weight_codes, fp8_col_scales, bias),
            "fp8_triton_engine": lambda: int8_gemm_into(fp8_engine_out, fp8_codes, fp8_weight_codes, fp8_col_scales,
                                                        bias, gelu=gelu, out_scale=0.05, value_dtype=torch.float16),
        }
        record = {"gemm": name, "m": rows, "n": n, "k": k}
        for variant, fn in variants.items():
            ms = time_graphed(fn).median_ms
            record[f"{variant}_us"] = ms * 1e3
            record[f"{variant}_tops"] = tera_ops_per_s(rows, n, k, ms)
        int8_gemm_into(out, codes, weight_codes, col_scales, bias)
        reference = torch.addcmul(bias, torch._int_mm(codes, weight_codes.t()), col_scales).half()
        record["fused_max_rel_err"] = float((out.float() - reference.float()).abs().max() / reference.float().abs().max())
        int8_gemm_into(fp8_out, fp8_codes, fp8_weight_codes, fp8_col_scales, bias)
        fp8_reference = scaled_mm().float()
        record["fp8_triton_max_rel_err"] = float((fp8_out.float() - fp8_reference).abs().max()
                                                 / fp8_reference.abs().max())
        records.append(record)
        del operands, x, weight, codes, weight_codes, out, out_engine, reference, fp8_codes, fp8_weight_codes, fp8_out
        del fp8_engine_out, fp8_reference
        torch.cuda.empty_cache()
    return records


LAYERNORM_CANDIDATES = ((1, 4), (2, 4), (2, 2), (4, 2), (4, 4), (4, 8), (8, 4), (8, 8), (16, 8))


def time_int8_skip_layernorm() -> list[dict]:
    """µs (CUDA-graph replays: no launch overhead) and GB/s (int8 bytes read and written) of
    ``int8_skip_layernorm_into`` on codes, per token count and (rows per program, warps)."""
    from helpers.portable.kernels.quant_kernels import int8_skip_layernorm_into

    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = 1024
    gamma, beta, bias = (torch.randn(hidden, device="cuda", generator=gen) for _ in range(3))
    records = []
    for tokens in (16384, 49152):
        x, skip = (torch.randint(-128, 128, (tokens, hidden), device="cuda", generator=gen, dtype=torch.int8)
                   for _ in range(2))
        out = torch.empty_like(x)
        for launch in LAYERNORM_CANDIDATES:
            ms = time_graphed(lambda: int8_skip_layernorm_into(out, x, skip, gamma, beta, bias, 0.03, 0.025, 0.04,
                                                               1e-5, launch=launch)).median_ms
            records.append({"int8_skip_layernorm_tokens": tokens, "rows_per_program": launch[0], "warps": launch[1],
                            "us": ms * 1e3, "gb_per_s": 3 * x.numel() / (ms * 1e-3) / 1e9})
    return records


# (BLOCK_M, BLOCK_N, warps) of the INT8 attention kernel tried by --attention.
ATTENTION_CANDIDATES = ((32, 128, 4), (64, 128, 4), (128, 128, 8), (64, 64, 4), (128, 64, 8), (128, 64, 4),
                        (128, 32, 8), (128, 32, 4))


def time_int8_attention(batch: int = 128, heads: int = 16, head: int = 64) -> list[dict]:
    """µs per call (CUDA-graph replays) of ``int8_attention_into`` per block candidate, and of the FP16
    engine's attention."""
    from helpers.portable.kernels.int8_attention import int8_attention_into

    gen = torch.Generator(device="cuda").manual_seed(0)
    records = []
    for seq in (128, 384):
        qkv = torch.randint(-127, 128, (seq, batch, 3 * heads * head), device="cuda", generator=gen, dtype=torch.int8)
        mask_idx = torch.full((batch,), seq, dtype=torch.int32, device="cuda")
        out = torch.empty(seq, batch, heads * head, dtype=torch.int8, device="cuda")
        half = (qkv.float() * 0.02).half()
        times = {"fp16_sdpa": time_graphed(lambda: kernels.attention_fixed(half, mask_idx, heads)).median_ms}
        for blocks in ATTENTION_CANDIDATES:
            times["int8 %dx%d w%d" % blocks] = time_graphed(
                lambda: int8_attention_into(out, qkv, mask_idx, heads, 0.02, 0.004, 1 / 127, blocks=blocks)).median_ms
        for name, ms in times.items():
            records.append({"attention": name, "seq": seq, "batch": batch, "us": ms * 1e3})
    return records


SUSTAINED_SHAPE = (16384, 4096, 1024)  # FC1 of BERT-large at S = 128, batch 128


def sustained_gemm_rate(precision: str, seconds: float) -> dict:
    """TFLOP/s (FP16, cuBLAS) or TOPS (INT8, the Triton kernel) of one ``SUSTAINED_SHAPE`` GEMM with
    bias and float16 output, held for ``seconds`` back to back (``bench.timing.sustained_rate``)."""
    from helpers.portable.kernels.int8_gemm import int8_gemm_into

    rows, n, k = SUSTAINED_SHAPE
    operands = gemm_operands(rows, n, k, torch.Generator(device="cuda").manual_seed(0))
    if precision == "fp16":
        def product() -> object:
            return F.linear(operands["x"], operands["weight"], operands["bias16"])
    else:
        out = torch.empty(rows, n, dtype=torch.float16, device="cuda")

        def product() -> object:
            return int8_gemm_into(out, operands["codes"], operands["weight_codes"], operands["col_scales"],
                                  operands["bias"])
    rate = sustained_rate(product, lambda timing: tera_ops_per_s(rows, n, k, timing.median_ms), seconds)
    return {"sustained_gemm": "x".join(map(str, SUSTAINED_SHAPE)), "precision": precision, "seconds": seconds,
            "rate_tera_ops": rate}


def measure(engine: Path, batch: int, seq: int, iterations: int, profile: bool) -> dict:
    free_gpu_memory()
    runner = EngineRunner(engine, device="cuda", enable_graph=True)
    runner.activate(batch, seq)
    runner.copy_inputs(fixed_inputs(batch, seq))
    runner.synchronize()
    with torch.cuda.stream(runner.stream):
        graph = time_cuda(runner.execute, warmup=3, iterations=iterations)
        result = {"graph_ms": graph.median_ms, "peak_mib": torch.cuda.max_memory_allocated() / 2**20}
        if profile:
            runner.enable_graph = False
            result.update(profile_kernels(runner.execute, iterations=1))
    del runner
    free_gpu_memory()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file of all measurements")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq", type=int, action="append", help="sequence lengths (default 128 and 384)")
    parser.add_argument("--precision", action="append", choices=sorted(VARIANTS), help="engines (default all)")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--gemm-rows", type=int, action="append", default=[], help="time the GEMMs alone at M rows")
    parser.add_argument("--layernorm", action="store_true", help="time the INT8 skip-LayerNorm kernel alone")
    parser.add_argument("--attention", action="store_true", help="time the -imh attention kernel alone")
    parser.add_argument("--no-engines", action="store_true", help="skip the engines (with --gemm-rows)")
    parser.add_argument("--sustained", type=float, default=0.0, metavar="SECONDS",
                        help="then hold the FP16 and INT8 GEMMs this long each (power-capped rates)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench/int8_speed.py needs a CUDA GPU", file=sys.stderr)
        return 1
    records = []
    for rows in args.gemm_rows:
        for record in time_gemms(rows):
            print(json.dumps(record), flush=True)
            records.append(record)
    if args.layernorm:
        for record in time_int8_skip_layernorm():
            print(json.dumps(record), flush=True)
            records.append(record)
    if args.attention:
        for record in time_int8_attention():
            print(json.dumps(record), flush=True)
            records.append(record)
    if not args.no_engines:
        records += time_engines(args)
    if args.sustained > 0:
        rates = {}
        for precision in ("fp16", "int8"):  # FP16 first: INT8 then starts on a card already at its cap
            record = sustained_gemm_rate(precision, args.sustained)
            print(json.dumps(record), flush=True)
            records.append(record)
            rates[precision] = record["rate_tera_ops"]
        print(f"sustained INT8 / FP16 GEMM rate: {rates['int8'] / rates['fp16']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(args.out, json.dumps(records, indent=1))
    return 0


def time_engines(args: argparse.Namespace) -> list[dict]:
    seqs = tuple(args.seq or (128, 384))
    setup = Setup("cuda", SHAPES["bert-large"], ["-f"], (seqs[0], seqs[-1]), (args.batch,), (args.batch,), 10, 3, [], [])
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        ws = Workspace(Path(scratch), setup)
        calibration = ["-j", str(ws.squad()), "-v", ws.vocab(), "-n", "4", "-p", str(ws.root / "calib.cache")]
        for precision in args.precision or list(VARIANTS):
            engine = ws.root / f"{precision}.engine"
            flags = VARIANTS[precision] + (calibration if precision != "fp16" else [])
            try:  # one engine's failure still leaves the others' numbers
                build("builder.py", [*ws.common(), "-o", str(engine), *flags, "-b", str(args.batch),
                                     *[a for s in seqs for a in ("-s", str(s))]])
                for index, seq in enumerate(seqs):
                    record = {"precision": precision, "batch": args.batch, "seq": seq,
                              **measure(engine, args.batch, seq, args.iterations, profile=index == 0)}
                    print(json.dumps(record), flush=True)
                    records.append(record)
            except Exception:
                print(f"{precision} failed:", file=sys.stderr)
                traceback.print_exc()
            engine.unlink(missing_ok=True)
    by_key = {(r["precision"], r["seq"]): r["graph_ms"] for r in records}
    for (precision, seq), ms in sorted(by_key.items()):
        base = by_key.get(("fp16", seq))
        ratio = f"{base / ms:.2f}x FP16 throughput" if base else ""
        print(f"{precision} S={seq} B={args.batch}: {ms:.2f} ms {ratio}", flush=True)
    return records


if __name__ == "__main__":
    sys.exit(main())
