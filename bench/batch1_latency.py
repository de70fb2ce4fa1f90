"""Batch-1 latency: the few-rows Triton GEMM under programmatic dependent launch against cuBLASLt.

Run on the GPU machine from the repository root:
    python -m bench.batch1_latency [--out-dir DIR] [--sweep] [--no-engines]

1. Validation: ``few_rows_gemm.linear`` (bias, bias + GELU) and ``partial_products`` + the
   skip-LayerNorm that sums them, against float32 PyTorch math on every BERT-base/large GEMM shape
   at 128 and 384 rows, captured in a CUDA graph with PDL on.
2. ``--sweep``: every tile configuration of ``SWEEP_CONFIGS`` per GEMM shape and row bucket (PDL on,
   12 weight copies rotated so weights come from HBM); prints the winners as ``CONFIGS`` entries for
   ``few_rows_gemm`` and uses them for the rest of the run.
3. Per GEMM, graph-timed µs per call (12 weight copies rotated): cuBLASLt (``cublaslt.linear``, the
   engine's other path) against the few-rows GEMM with ``DEMOBERT_PDL=0`` and ``=1`` (PDL applies
   up to ``pdl.CHAIN_MAX_ROWS`` rows only: above, both columns launch plainly); the products that
   feed a skip-LayerNorm are timed with it (cuBLASLt + LN against partials + summing LN).
4. End to end: random BERT-large and BERT-base engines (``bench.compare``'s builder path, FP16, CUDA
   graph), every setting of (``DEMOBERT_FEW_ROWS_GEMM``, ``DEMOBERT_PDL``) in one process, timed in
   turns (forward then backward order, 100 replays each, mean of the two medians), logits checked
   against the reference plan.  Writes batch1_latency.md / .json into --out-dir as rows come.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
from collections.abc import Callable

import torch

from bench.compare import (LOGIT_TOLERANCE, MODELS, CompareError, EngineUnderTest, build_engine, gpu_models,
                           make_inputs, save_random_model)
from bench.timing import time_graphed
from helpers.files import write_json_and_markdown
from helpers.portable import ops
from helpers.portable.kernels import cublaslt
from helpers.portable.options import FEW_ROWS_ENV, PDL_ENV

ROTATED_COPIES = 12
GEMM_ROWS = (128, 256, 384)
SWEEP_ROWS = (128, 384)
ENGINE_SHAPES = {"large": ((128, 1), (384, 1)), "base": ((128, 1),)}  # (S, B)
SETTINGS = (("0", "1"), ("1", "0"), ("1", "1"), ("0", "0"))  # (DEMOBERT_FEW_ROWS_GEMM, DEMOBERT_PDL)
ITERATIONS = 100
TOLERANCE = {"atol": 2e-2, "rtol": 2e-2}


def sweep_configs(partials: bool) -> list:
    from helpers.portable.kernels.few_rows_gemm import Config

    # (block_m, block_n, block_k, warps, stages), each through pointers and through TMA; ≤ 96 KB of
    # shared memory lets a kernel's programs share an SM with the next one's under PDL.
    tiles = [(64, 32, 128, 4, 4), (64, 64, 128, 4, 4), (64, 64, 128, 4, 3), (64, 64, 64, 4, 4), (64, 64, 64, 4, 6),
             (128, 32, 128, 4, 4), (128, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 128, 64, 8, 3),
             (128, 64, 128, 8, 3)]
    splits = (1, 2, 4, 8) if partials else (1,)
    return [Config(m, n, k, s, w, st, tma) for m, n, k, w, st in tiles for s in splits for tma in (False, True)]


def gemms(model: str) -> list[tuple[str, int, int, bool, bool, bool]]:
    """(name, N, K, bias, GELU, followed by a skip-LayerNorm) of one encoder layer."""
    _, hidden, _, inter = MODELS[model]
    return [("QKV + bias", 3 * hidden, hidden, True, False, False),
            ("attention out + skip-LN", hidden, hidden, False, False, True),
            ("FC1 + bias + GELU", inter, hidden, True, True, False),
            ("FC2 + skip-LN", hidden, inter, False, False, True)]


class Results:
    def __init__(self, out_dir: str) -> None:
        import triton

        self.out_dir = out_dir
        self.data: dict = {"format_version": 1, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                           "triton": triton.__version__, "validation": [], "sweep": [], "gemms": [], "engines": []}

    def save(self) -> None:
        write_json_and_markdown(self.out_dir, "batch1_latency", self.data, self.markdown())

    def markdown(self) -> str:
        lines = [f"{self.data['device']}, torch {self.data['torch']}, Triton {self.data['triton']}", "",
                 "| model | GEMM | M | cuBLASLt µs | few-rows PDL=0 µs | few-rows PDL=1 µs | PDL=1 / cuBLASLt | config |",
                 "|" + "---|" * 8]
        for r in self.data["gemms"]:
            lines.append(f"| {r['model']} | {r['gemm']} | {r['m']} | {r['cublaslt_us']:.1f} | {r['pdl0_us']:.1f} | "
                         f"{r['pdl1_us']:.1f} | {r['pdl1_us'] / r['cublaslt_us']:.2f} | {r['config']} |")
        lines += ["", "| model | S × B | " + " | ".join(f"rows={g} PDL={p} ms" for g, p in SETTINGS)
                  + " | best / cuBLASLt PDL=0 | max Δlogits vs reference |", "|" + "---|" * (len(SETTINGS) + 4)]
        for r in self.data["engines"]:
            ms = [r["ms"].get(f"{g}{p}") for g, p in SETTINGS]
            base = r["ms"].get("00")
            best = min((v for v in ms if v is not None), default=None)
            ratio = f"{best / base:.3f}" if best and base else "—"
            cells = " | ".join("failed" if v is None else f"{v:.3f}" for v in ms)
            lines.append(f"| {r['model']} | {r['seq']} × {r['batch']} | {cells} | {ratio} | "
                         f"{max(r['logit_delta'].values(), default=float('nan')):.2g} |")
        return "\n".join(lines) + "\n"


def set_env(name: str, value: str) -> None:
    os.environ[name] = value


class GemmCase:
    """Operands of one GEMM shape: rows, 12 weight copies, bias, the skip-LN's operands."""

    def __init__(self, n: int, k: int, m: int, with_bias: bool, gelu: bool, skip_ln: bool) -> None:
        gen = torch.Generator(device="cuda").manual_seed(n * 7 + k * 3 + m)
        self.m, self.n, self.k, self.gelu, self.skip_ln = m, n, k, gelu, skip_ln
        self.pdl = True  # the few-rows kernels launch under PDL
        self.rows = torch.randn(m, k, device="cuda", generator=gen).half()
        self.weights = [(torch.randn(n, k, device="cuda", generator=gen) / math.sqrt(k)).half()
                        for _ in range(ROTATED_COPIES)]
        self.bias = torch.randn(n, device="cuda", generator=gen).half() if with_bias or skip_ln else None
        self.skip = torch.randn(m, n, device="cuda", generator=gen).half()
        self.gamma = torch.rand(n, device="cuda", generator=gen) + 0.5
        self.beta = torch.randn(n, device="cuda", generator=gen)

    def reference(self, weight: torch.Tensor) -> torch.Tensor:
        y = self.rows.float() @ weight.float().t()
        if self.skip_ln:
            return ops.layernorm(y + self.skip.float() + self.bias.float(), self.gamma, self.beta, 1e-5)
        if self.bias is not None:
            y = y + self.bias.float()
        return ops.gelu_tanh(y) if self.gelu else y

    def few_rows(self, weight: torch.Tensor, config=None) -> torch.Tensor:
        from helpers.portable.kernels import few_rows_gemm
        from helpers.portable.kernels.norms import skip_layernorm_into

        if not self.skip_ln:
            return few_rows_gemm.linear(self.rows, weight, self.bias, self.gelu, config, pdl=self.pdl)
        partials = few_rows_gemm.partial_products(self.rows, weight, config, pdl=self.pdl)
        out = torch.empty_like(self.skip)
        skip_layernorm_into(out, None, partials, self.skip, self.gamma, self.beta, self.bias.float(), 1e-5,
                            partials.shape[0], pdl=self.pdl)
        return out

    def cublaslt(self, weight: torch.Tensor) -> torch.Tensor:
        from helpers.portable.kernels.norms import skip_layernorm_into

        if not self.skip_ln:
            return cublaslt.linear(self.rows, weight, self.bias, gelu=self.gelu)
        y = cublaslt.linear(self.rows, weight, None)
        out = torch.empty_like(self.skip)
        skip_layernorm_into(out, None, y, self.skip, self.gamma, self.beta, self.bias.float(), 1e-5, pdl=self.pdl)
        return out

    def time(self, call: Callable[[torch.Tensor], object]) -> float:
        def calls() -> None:
            for weight in self.weights:
                call(weight)
        return time_graphed(calls).median_ms * 1e3 / len(self.weights)


def validate(results: Results, models: list[str]) -> list[str]:
    """Every shape's few-rows result, captured and replayed in a graph under PDL, against float32 math."""
    failures = []
    for model in models:
        for name, n, k, with_bias, gelu, skip_ln in gemms(model):
            for m in SWEEP_ROWS:
                case = GemmCase(n, k, m, with_bias, gelu, skip_ln)
                expected = case.reference(case.weights[0])
                eager = case.few_rows(case.weights[0]).float()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    captured = case.few_rows(case.weights[0])
                graph.replay()
                torch.cuda.synchronize()
                error = max((eager - expected).abs().max().item(), (captured.float() - expected).abs().max().item())
                ok = torch.allclose(captured.float(), expected, **TOLERANCE) and torch.allclose(eager, expected,
                                                                                              **TOLERANCE)
                print(f"check {model} {name} M={m}: max|err| {error:.3g} {'ok' if ok else 'FAIL'}", flush=True)
                results.data["validation"].append({"model": model, "gemm": name, "m": m, "max_error": error, "ok": ok})
                if not ok:
                    failures.append(f"{model} {name} M={m}")
    results.save()
    return failures


def sweep(results: Results, models: list[str]) -> None:
    from helpers.portable.kernels import few_rows_gemm

    winners = {}
    for model in models:
        for name, n, k, with_bias, gelu, skip_ln in gemms(model):
            for m in SWEEP_ROWS:
                case = GemmCase(n, k, m, with_bias, gelu, skip_ln)
                expected = case.reference(case.weights[0])
                timings = []
                for config in sweep_configs(skip_ln):
                    if not torch.allclose(case.few_rows(case.weights[0], config).float(), expected, **TOLERANCE):
                        raise RuntimeError(f"sweep: {config} gives a wrong result for {model} {name} M={m}")
                    timings.append((case.time(lambda w, c=config: case.few_rows(w, c)), config))
                timings.sort(key=lambda t: t[0])
                best_us, best = timings[0]
                winners[(n, k, few_rows_gemm.row_bucket(m), skip_ln)] = best
                print(f"sweep {model} {name} M={m}: best {best_us:.2f} us {best}; next "
                      + ", ".join(f"{us:.2f} {dataclasses.astuple(c)}" for us, c in timings[1:4]), flush=True)
                results.data["sweep"].append({"model": model, "gemm": name, "m": m,
                                              "timings": [[us, dataclasses.astuple(c)] for us, c in timings]})
                results.save()
    few_rows_gemm.CONFIGS.update(winners)
    print("CONFIGS = {", flush=True)
    for key, config in sorted(winners.items()):
        print(f"    {key}: Config{dataclasses.astuple(config)},")
    print("}", flush=True)


def bench_gemms(results: Results, models: list[str]) -> None:
    from helpers.portable.kernels import few_rows_gemm

    for model in models:
        for name, n, k, with_bias, gelu, skip_ln in gemms(model):
            for m in GEMM_ROWS:
                case = GemmCase(n, k, m, with_bias, gelu, skip_ln)
                row = {"model": model, "gemm": name, "m": m, "n": n, "k": k,
                       "config": dataclasses.astuple(few_rows_gemm.config_for(m, n, k, skip_ln))}
                case.cublaslt(case.weights[0])  # tunes the shape on the default stream, outside of captures
                torch.cuda.synchronize()
                timed: dict[str, list[float]] = {"cublaslt": [], "pdl0": [], "pdl1": []}
                for order in (("cublaslt", "pdl0", "pdl1"), ("pdl1", "pdl0", "cublaslt")):
                    for variant in order:
                        case.pdl = variant == "pdl1"
                        timed[variant].append(case.time(case.cublaslt if variant == "cublaslt" else case.few_rows))
                for variant, values in timed.items():
                    row[f"{variant}_us"] = sum(values) / len(values)
                print(f"{model} {name} M={m}: cuBLASLt {row['cublaslt_us']:.2f} us, few-rows PDL=0 "
                      f"{row['pdl0_us']:.2f} us, PDL=1 {row['pdl1_us']:.2f} us", flush=True)
                results.data["gemms"].append(row)
                results.save()


def bench_engines(results: Results, model: str) -> None:
    shapes = ENGINE_SHAPES[model]
    with tempfile.TemporaryDirectory() as folder:
        save_random_model(model, folder)
        engine_path = os.path.join(folder, "bert.engine")
        build_engine(folder, engine_path, sorted({b for _, b in shapes}), sorted({s for s, _ in shapes}))
        reference = EngineUnderTest(engine_path, fast=False)
        engines = {}
        for setting in SETTINGS:  # an engine reads the switches when it loads
            set_env(FEW_ROWS_ENV, setting[0])
            set_env(PDL_ENV, setting[1])
            engines[setting] = EngineUnderTest(engine_path, fast=True)
        for seq, batch in shapes:
            check_inputs = make_inputs(batch, seq, padded=True, seed=1)
            reference.activate(batch, seq, check_inputs)
            expected = reference.logits().cpu()
            row: dict = {"model": model, "seq": seq, "batch": batch, "ms": {}, "runs_ms": {}, "logit_delta": {}}
            for setting, engine in engines.items():
                engine.activate(batch, seq, check_inputs)
                delta = (engine.logits().cpu() - expected).abs().max().item()
                row["logit_delta"]["".join(setting)] = delta
                print(f"{model} {seq}x{batch} rows={setting[0]} PDL={setting[1]}: max |Δlogits| {delta:.3g}"
                      f"{'' if delta <= LOGIT_TOLERANCE else ' FAIL'}", flush=True)
                engine.activate(batch, seq, make_inputs(batch, seq, padded=False, seed=2))
            for order in (SETTINGS, SETTINGS[::-1]):  # drift reaches every setting alike
                for setting in order:
                    ms = engines[setting].time(ITERATIONS, graph=True).median_ms
                    row["runs_ms"].setdefault("".join(setting), []).append(ms)
            for key, runs in row["runs_ms"].items():
                row["ms"][key] = sum(runs) / len(runs)
            print(f"{model} {seq}x{batch}: " + ", ".join(f"rows={k[0]} PDL={k[1]} {v:.3f} ms"
                                                        for k, v in row["ms"].items()), flush=True)
            results.data["engines"].append(row)
            results.save()
        del engines, reference
        torch.cuda.empty_cache()
    for name in (FEW_ROWS_ENV, PDL_ENV):
        os.environ.pop(name, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=".")
    parser.add_argument("--models", default="large,base")
    parser.add_argument("--sweep", action="store_true", help="search the tile configurations first")
    parser.add_argument("--no-gemms", action="store_true", help="skip the per-GEMM table")
    parser.add_argument("--no-engines", action="store_true", help="skip the end-to-end table")
    args = parser.parse_args(argv)
    try:
        models = gpu_models(args.models)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = Results(args.out_dir)
    print(f"{results.data['device']}, torch {torch.__version__}, Triton {results.data['triton']}", flush=True)
    failures = validate(results, models)
    if failures:
        print(f"error: wrong results for {', '.join(failures)}", file=sys.stderr)
        return 1
    if args.sweep:
        sweep(results, models)
    if not args.no_engines:
        for model in models:
            bench_engines(results, model)
    if not args.no_gemms:
        bench_gemms(results, models)
    print(results.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
