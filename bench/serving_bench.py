#!/usr/bin/env python3
"""Served vs offline throughput and latency of a portable BERT engine behind Triton.

For the fixed-length and the packed engine: builds both from one random model, times them
offline (perf.py at the batch sizes, perf_varseqlen.py --squad-lengths), serves each with
serving.serve (once per --instances count) and loads bert_engine with serving.load_test at the
concurrency levels.  Then it serves and loads the same bert_engine with zero logits in place of the
engine (bench/serving_floor.py): what the server and the client cost without any engine.  Writes
serving_bench.json and a markdown table to --out.  ``--tiny`` checks the script on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(argv: list[str], log: Path) -> None:
    print("+", " ".join(argv), flush=True)
    with open(log, "a") as out:
        status = subprocess.run(argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(argv)}\n{log.read_text()[-3000:]}")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def served(repo: Path, args: argparse.Namespace, out: Path, name: str) -> dict:
    """Serve ``repo`` and load its bert_engine at every level of ``args`` (levels, durations, client
    processes, protocol, the server's Python); the load test's report and Triton's statistics."""
    http, grpc, metrics = free_ports(3)
    log = out / f"serve_{name}.log"
    with open(log, "w") as server_log:
        server = subprocess.Popen(
            [args.server_python, "-m", "serving.serve", "--model-repository", str(repo), "--http-port", str(http),
             "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
            cwd=REPO_ROOT, stdout=server_log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 600
            while "Triton Inference Server ready" not in log.read_text(errors="replace"):
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            report = out / f"load_{name}.json"
            port = grpc if args.protocol == "grpc" else http
            run([PY, "-m", "serving.load_test", "--url", f"127.0.0.1:{port}", "--protocol", args.protocol, "--model", "bert_engine",
                 "--concurrency", args.levels, "--duration", str(args.duration), "--warm-up", str(args.warm_up),
                 "--processes", str(args.processes), "--json", str(report)], out / "bench.log")
            stats = subprocess.run(["curl", "-s", f"http://127.0.0.1:{http}/v2/models/bert_engine/stats"], capture_output=True, text=True).stdout
            return {"load": json.loads(report.read_text()), "stats": json.loads(stats or "{}")}
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=120)
            except subprocess.TimeoutExpired:
                server.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="Tiny model on the CPU: checks the script")
    parser.add_argument("--vocab", help="vocab.txt with 30522 entries (default: MiniLM's from its PyPI package)")
    parser.add_argument("--levels", default="1,64,256")
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warm-up", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="How the load test's clients talk to the server")
    parser.add_argument("--instances", default="2", help="Engine instances on the GPU; comma-separated counts serve each engine once per count")
    parser.add_argument("--max-queue-delay-us", type=int, default=1000)
    parser.add_argument("--server-python", default=PY, help="Python of the serving environment (default: this one)")
    parser.add_argument("--skip", default="", help="Comma-separated: fixed, packed")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="Serve both engines with CUDA graphs (and time them offline with --enable-graph)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO_ROOT))
    from bench.check_builder_gpu import SHAPES, TINY_SHAPES, random_qa_model

    device = "cpu" if args.tiny else "cuda"
    shape = TINY_SHAPES["tiny-h48n3l2"] if args.tiny else SHAPES["bert-large"]
    seq = 64 if args.tiny else 384
    flags = [] if args.tiny else ["-f"]
    batches = [int(b) for b in args.batches.split(",")]
    instance_counts = [int(n) for n in args.instances.split(",")]
    if args.vocab is None:
        from tests.squad_fixtures import minilm_vocab_file

        args.vocab = minilm_vocab_file()
    results: dict = {"device": device, "shape": shape, "sequence_length": seq, "batches": batches, "levels": args.levels,
                     "instances": instance_counts, "max_queue_delay_us": args.max_queue_delay_us, "cuda_graphs": args.cuda_graphs,
                     "protocol": args.protocol}
    with tempfile.TemporaryDirectory(prefix="serving_bench.") as work_dir:
        work = Path(work_dir)
        log = out / "bench.log"
        random_qa_model(shape, vocab_size=30522, seed=0).save_pretrained(work / "model")
        common = ["--hf", str(work / "model"), "--backend", "portable", "--device", device, *flags]
        batch_args = [a for b in batches for a in ("-b", str(b))]
        skip = set(args.skip.split(","))
        for kind, script, perf, extra in (("fixed", "builder.py", "perf.py", []), ("packed", "builder_varseqlen.py", "perf_varseqlen.py", ["--squad-lengths"])):
            if kind in skip:
                continue
            engine = work / f"{kind}.engine"
            run([PY, script, *common, "-o", str(engine), *batch_args, "-s", str(seq)], log)
            offline = out / f"perf_{kind}.json"
            graphs = ["--cuda-graphs"] if args.cuda_graphs and device == "cuda" else []
            run([PY, perf, "-e", str(engine), *batch_args, "-s", str(seq), "-w", "20", "-i", "100", *extra, "--device", device,
                 "--json", str(offline), *(["--enable-graph"] if graphs else [])], log)
            results[kind] = {"offline": json.loads(offline.read_text()), "served": {}}
            for count in instance_counts:
                repo = work / f"repo_{kind}_{count}"
                run([PY, "-m", "serving.repository", "-e", str(engine), "-v", args.vocab, "-o", str(repo), "--device", device,
                     "--instances", str(count), "--max-queue-delay-us", str(args.max_queue_delay_us), *graphs], log)
                results[kind]["served"][str(count)] = served(repo, args, out, f"{kind}_{count}")
                (out / "serving_bench.json").write_text(json.dumps(results, indent=2))
            engine.unlink()
            floor = floor_repository(work / f"repo_{kind}_{instance_counts[0]}", work / f"floor_{kind}")
            results[kind]["floor"] = served(floor, args, out, f"{kind}_floor")
            (out / "serving_bench.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    for _kind, label, run_result in served_runs(results):
        print(f"{label}: {execution_summary(run_result['stats'])}")
    return 0


def served_runs(results: dict) -> list[tuple[str, str, dict]]:
    """(engine kind, label, served run) of every served engine, one per instance count, then its floor."""
    runs = []
    for kind in ("fixed", "packed"):
        if kind not in results:
            continue
        counts = results[kind]["served"]
        for count, run_result in counts.items():
            label = kind if len(counts) == 1 else f"{kind}, {count} instance{'s' if count != '1' else ''}"
            runs.append((kind, label, run_result))
        runs.append((kind, f"{kind}, no engine", results[kind]["floor"]))
    return runs


def floor_repository(repo: Path, floor: Path) -> Path:
    """A repository serving bench/serving_floor.py under the config of ``repo``'s bert_engine."""
    from serving import ENGINE_MODEL
    from serving.repository import entry_point

    version = floor / ENGINE_MODEL / "1"
    version.mkdir(parents=True)
    shutil.copy(repo / ENGINE_MODEL / "config.pbtxt", floor / ENGINE_MODEL / "config.pbtxt")
    (version / "model.py").write_text(entry_point("bench.serving_floor", "FloorModel", str(REPO_ROOT)))
    return floor


def execution_summary(stats: dict) -> str:
    """How Triton batched the requests of every level together: executions, mean batch, time per execution."""
    model = (stats.get("model_stats") or [{}])[0]
    batches = model.get("batch_stats", [])
    executions = sum(b["compute_infer"]["count"] for b in batches)
    if not executions:
        return "no executions recorded"
    requests = sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches)
    compute_ms = sum(int(b["compute_infer"]["ns"]) for b in batches) / 1e6
    inference = model.get("inference_stats", {})
    queue = inference.get("queue", {})
    queue_ms = int(queue.get("ns", 0)) / 1e6 / max(int(queue.get("count", 0)), 1)
    single = next((b for b in batches if b["batch_size"] == 1), None)
    phases = "" if single is None else ", one-request executions: " + ", ".join(
        f"{phase} {int(single[f'compute_{phase}']['ns']) / 1e6 / max(int(single[f'compute_{phase}']['count']), 1):.3f} ms"
        for phase in ("input", "infer", "output"))
    return (f"{executions} executions of {requests} requests (mean batch {requests / executions:.1f}), "
            f"compute {compute_ms / executions:.2f} ms per execution, queue {queue_ms:.2f} ms per request{phases}")


def table(results: dict) -> str:
    """Every served run's levels (the engine at each instance count, then its floor) against the
    engine's offline batches."""
    lines = ["| engine | concurrency / batch | served req/s | offline seq/s | served / offline | p50 ms | p99 ms | offline batch ms |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, label, run_result in served_runs(results):
        offline = {r["batch_size"]: r for r in results[kind]["offline"]["results"]}
        for level in run_result["load"]["levels"]:
            c = level["concurrency"]
            base = offline.get(c)
            served_cells = f"| {label} | {c} | {level['requests_per_second']:.1f} |"
            latency_cells = f"{level['p50_ms']:.2f} | {level['p99_ms']:.2f} |"
            if base:
                ratio = level["requests_per_second"] / base["sequences_per_second"]
                lines.append(f"{served_cells} {base['sequences_per_second']:.1f} | {ratio:.2f} | {latency_cells} {base['avg_ms']:.2f} |")
            else:
                lines.append(f"{served_cells} – | – | {latency_cells} – |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
