"""Tuned cuBLASLt GEMMs (helpers.portable.kernels.cublaslt) against PyTorch's calls, per GEMM and end to end.

Run on the GPU machine from the repository root:
    python -m bench.cublaslt_bench [--out-dir DIR] [--models large,base] [--no-engines]

Per GEMM of BERT-large and BERT-base (QKV + bias, attention out, FC1 + bias + GELU, FC2) at M =
128, 384, 16384, 49152 rows: PyTorch's call and ``cublaslt.linear`` (tuned on its first call),
graph-timed per call, with 12 weight copies rotated below 1024 rows (as the model streams 24
layers of weights), after checking the tuned result against PyTorch's; timed torch, tuned, tuned,
torch and averaged.  End to end: the portable engine (builder.py from a random HF model, FP16, CUDA
graph) with DEMOBERT_CUBLASLT=0 and =1 in one process, timed off, on, on, off and averaged, the
logits of the two compared.  Writes cublaslt_bench.md and cublaslt_bench.json into
--out-dir as the rows come.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import torch

from bench.compare import (MODELS, CompareError, EngineUnderTest, build_engine, gpu_models, make_inputs,
                           save_random_model)
from bench.timing import time_graphed
from helpers.files import write_json_and_markdown
from helpers.portable.kernels import cublaslt
from helpers.portable.options import CUBLASLT_ENV

GEMM_ROWS = (128, 384, 16384, 49152)
ENGINE_SHAPES = {"large": ((128, 1), (384, 1), (384, 128)), "base": ((128, 1), (384, 128))}  # (S, B)
ROTATED_COPIES = 12
SETTINGS = ("0", "1")  # DEMOBERT_CUBLASLT
ITERATIONS = 100


def gemms(model: str) -> list[tuple[str, int, int, bool, bool]]:
    """(name, N, K, bias, GELU) of one encoder layer."""
    _, hidden, _, inter = MODELS[model]
    return [("QKV + bias", 3 * hidden, hidden, True, False), ("attention out", hidden, hidden, False, False),
            ("FC1 + bias + GELU", inter, hidden, True, True), ("FC2", hidden, inter, False, False)]


class Results:
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.data: dict = {"format_version": 1, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                           "gemms": [], "engines": []}

    def save(self) -> None:
        write_json_and_markdown(self.out_dir, "cublaslt_bench", self.data, self.markdown())

    def markdown(self) -> str:
        lines = [f"{self.data['device']}, torch {self.data['torch']}", "",
                 "| model | GEMM | M | torch µs | tuned µs | tuned / torch | winner (candidates, rejected) | "
                 "tuner: torch / best cuBLASLt µs | tuning s | max Δ |", "|" + "---|" * 10]
        for r in self.data["gemms"]:
            best = f"{r['tuner_best_cublaslt_us']:.1f}" if r["tuner_best_cublaslt_us"] else "—"
            lines.append(f"| {r['model']} | {r['gemm']} | {r['m']} | {r['torch_us']:.1f} | {r['tuned_us']:.1f} | "
                         f"{r['tuned_us'] / r['torch_us']:.2f} | {r['winner']} ({r['candidates']}, {r['rejected']}) | "
                         f"{r['tuner_torch_us']:.1f} / {best} | {r['tuning_s']:.2f} | {r['max_error']:.2g} |")
        lines += ["", "| model | S × B | DEMOBERT_CUBLASLT=0 ms | =1 ms | =1 / =0 | first run with tuning s | "
                      "max Δlogits |", "|" + "---|" * 7]
        for r in self.data["engines"]:
            lines.append(f"| {r['model']} | {r['seq']} × {r['batch']} | {r['off_ms']:.3f} | {r['on_ms']:.3f} | "
                         f"{r['on_ms'] / r['off_ms']:.3f} | {r['tuning_s']:.1f} | {r['max_logit_delta']:.2g} |")
        return "\n".join(lines) + "\n"


def bench_gemm(results: Results, model: str, name: str, n: int, k: int, with_bias: bool, gelu: bool, m: int) -> None:
    copies = ROTATED_COPIES if m <= 1024 else 1
    rows = torch.randn(m, k, device="cuda").half()
    weights = [(torch.randn(n, k, device="cuda") / math.sqrt(k)).half() for _ in range(copies)]
    bias = torch.randn(n, device="cuda").half() if with_bias else None
    expected = cublaslt.torch_linear(rows, weights[0], bias, gelu)
    start = time.perf_counter()
    got = cublaslt.linear(rows, weights[0], bias, gelu)  # tunes
    torch.cuda.synchronize()
    tuning_s = time.perf_counter() - start
    error = (got.float() - expected.float()).abs().max().item()
    [choice] = [c for c in cublaslt.choices() if (c.m, c.n, c.k) == (cublaslt.m_bucket(m), n, k)
                and c.epilogue == (cublaslt.Epilogue.GELU_BIAS if gelu else
                                   cublaslt.Epilogue.BIAS if with_bias else cublaslt.Epilogue.NONE)]

    def run(fn):
        def calls():
            for w in weights:
                fn(rows, w, bias, gelu)
        return time_graphed(calls).median_ms * 1e3 / copies

    # torch, tuned, tuned, torch: the GPU's clock drift reaches both alike.
    first_torch, first_tuned, second_tuned, second_torch = (run(fn) for fn in (
        cublaslt.torch_linear, cublaslt.linear, cublaslt.linear, cublaslt.torch_linear))
    row = {"model": model, "gemm": name, "m": m, "n": n, "k": k, "torch_us": (first_torch + second_torch) / 2,
           "tuned_us": (first_tuned + second_tuned) / 2, "winner": choice.winner, "candidates": choice.candidates,
           "rejected": choice.rejected, "tuner_torch_us": choice.torch_us,
           "tuner_best_cublaslt_us": choice.best_cublaslt_us, "tuning_s": tuning_s, "max_error": error}
    print(f"{model} {name} M={m}: torch {row['torch_us']:.1f} us, tuned {row['tuned_us']:.1f} us "
          f"({choice.winner}, {choice.candidates} candidates, {choice.rejected} rejected; tuner saw torch "
          f"{choice.torch_us:.1f} / best cuBLASLt {choice.best_cublaslt_us}), tuning {tuning_s:.2f} s, "
          f"max |Δ| {error:.3g}", flush=True)
    results.data["gemms"].append(row)
    results.save()


def bench_engines(results: Results, model: str) -> None:
    shapes = ENGINE_SHAPES[model]
    with tempfile.TemporaryDirectory() as folder:
        save_random_model(model, folder)
        engine_path = os.path.join(folder, "bert.engine")
        build_engine(folder, engine_path, sorted({b for _, b in shapes}), sorted({s for s, _ in shapes}))
        cublaslt.clear_choices()  # each engine's first runs time their own tuning
        engines = {}
        for setting in SETTINGS:
            os.environ[CUBLASLT_ENV] = setting  # read when the engine loads
            engines[setting] = EngineUnderTest(engine_path, fast=True)
        for seq, batch in shapes:
            logits: dict[str, torch.Tensor] = {}
            first_s: dict[str, float] = {}
            times: dict[str, list[float]] = {s: [] for s in SETTINGS}
            for setting, engine in engines.items():
                engine.activate(batch, seq, make_inputs(batch, seq, padded=True, seed=1))
                start = time.perf_counter()
                logits[setting] = engine.logits().cpu()  # the first run tunes the new shapes
                first_s[setting] = time.perf_counter() - start
                engine.activate(batch, seq, make_inputs(batch, seq, padded=False, seed=2))
            for order in (SETTINGS, SETTINGS[::-1]):  # off, on, on, off: drift reaches both alike
                for setting in order:
                    times[setting].append(engines[setting].time(ITERATIONS, graph=True).median_ms)
            off_ms, on_ms = (sum(times[s]) / len(times[s]) for s in SETTINGS)
            print(f"{model} {seq}x{batch}: DEMOBERT_CUBLASLT=0 {times['0']} ms, =1 {times['1']} ms "
                  f"(first run with tuning {first_s['1']:.1f} s)", flush=True)
            results.data["engines"].append({"model": model, "seq": seq, "batch": batch, "off_ms": off_ms,
                                            "on_ms": on_ms, "off_runs_ms": times["0"], "on_runs_ms": times["1"],
                                            "tuning_s": first_s["1"],
                                            "max_logit_delta": (logits["0"] - logits["1"]).abs().max().item()})
            results.save()
        os.environ.pop(CUBLASLT_ENV)
        del engines
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=".")
    parser.add_argument("--models", default="large,base")
    parser.add_argument("--no-engines", action="store_true", help="per-GEMM tables only")
    args = parser.parse_args(argv)
    try:
        models = gpu_models(args.models)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not cublaslt.available(torch.device("cuda")):
        print("error: cuBLASLt is not available (libcublasLt not loadable)",
              file=sys.stderr)
        return 2
    torch.manual_seed(0)
    results = Results(args.out_dir)
    print(f"{results.data['device']}, torch {torch.__version__}, libcublasLt {cublaslt.library_path()}", flush=True)
    if not args.no_engines:
        for model in models:
            bench_engines(results, model)
    cublaslt.clear_choices()  # the GEMM rows time their own tuning
    for model in models:
        for m in GEMM_ROWS:
            for name, n, k, with_bias, gelu in gemms(model):
                bench_gemm(results, model, name, n, k, with_bias, gelu, m)
        torch.cuda.empty_cache()
    print(results.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
