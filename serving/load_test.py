#!/usr/bin/env python3
"""Loads a served model with concurrent clients and reports throughput and latency.

Each of ``--concurrency`` clients sends one request at a time, for ``--requests`` requests in
all or for ``--duration`` seconds.  Reported per concurrency level: requests per second,
p50/p95/p99 latency, error responses, and ``lost``: requests that got no answer, or an answer
to another request (0 when every request got exactly one answer).  Only for servers you run:
the URL must be a loopback address.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from helpers.cli import RunnerError, check_writable_output, exit_on_error, squad_examples, write_text_atomically  # noqa: E402
from helpers.squad_lengths import squad_like_lengths  # noqa: E402
from helpers.timing_statistics import percentile  # noqa: E402
from serving import ENGINE_MODEL, QA_MODEL  # noqa: E402
from serving.client import qa_inputs  # noqa: E402
from serving.triton_client import PROTOCOLS, TritonClient  # noqa: E402

EXAMPLE_PASSAGE = (
    "TensorRT is a high performance deep learning inference platform that delivers low latency and high "
    "throughput for apps such as recommenders, speech and image/video on NVIDIA GPUs. It includes parsers "
    "to import models, and plugins to support novel ops and layers before applying optimizations for inference."
)
EXAMPLE_QUESTION = "What is TensorRT?"


@dataclass(frozen=True)
class Workload:
    """What the clients send: text pairs for bert_qa, token rows for bert_engine."""

    url: str
    protocol: str
    model: str
    outputs: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...] = ()
    sequence_length: int = 0
    ragged: bool = False
    token_types: int = 2


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    lost: int
    first_error: str = ""


def check_loopback(url: str) -> None:
    host = url.rsplit(":", 1)[0].strip("[]")
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise RunnerError(f"cannot resolve {host!r}") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise RunnerError(f"the load test only targets servers on this machine (a loopback address), not {host}")


def engine_inputs(workload: Workload, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One feature-like row: random ids (below 100, which every vocabulary has), question then
    passage segment where the model has two token types, no padding."""
    length = int(squad_like_lengths(1, workload.sequence_length, rng)[0]) if workload.ragged else workload.sequence_length
    ids = rng.integers(5, 100, size=(1, length), dtype=np.int32)
    segments = np.zeros((1, length), dtype=np.int32)
    if workload.token_types > 1:
        segments[0, min(length - 1, 1 + length // 8) :] = 1
    inputs = {"input_ids": ids, "segment_ids": segments}
    if not workload.ragged:
        inputs["input_mask"] = np.ones((1, length), dtype=np.int32)
    return inputs


def client_loop(workload: Workload, client: TritonClient, tag: str, budget, deadline: float, seed: int, records: list) -> None:
    """One client: requests back to back until the shared budget or the deadline runs out."""
    rng = np.random.default_rng(seed)
    try:
        index = 0
        while budget.take() and time.monotonic() < deadline:
            if workload.model == ENGINE_MODEL:
                inputs = engine_inputs(workload, rng)
            else:
                question, context = workload.pairs[int(rng.integers(len(workload.pairs)))]
                inputs = qa_inputs(question, context)
            request_id = f"{tag}-{index}"
            index += 1
            started = time.perf_counter()
            try:
                reply = client.infer(workload.model, inputs, list(workload.outputs), request_id=request_id)
            except Exception as err:  # a transport failure: this request got no answer
                records.append((started, time.perf_counter() - started, "lost", f"{type(err).__name__}: {err}"))
                continue
            elapsed = time.perf_counter() - started
            if reply.request_id != request_id:
                records.append((started, elapsed, "lost", f"answer to {reply.request_id!r} for {request_id!r}"))
            elif reply.error is not None:
                records.append((started, elapsed, "error", reply.error))
            else:
                records.append((started, elapsed, "ok", ""))
    finally:
        client.close()


class Budget:
    """A thread-safe count of requests still to send (None: unlimited)."""

    def __init__(self, total: int | None):
        self._left = total
        self._lock = threading.Lock()

    def take(self) -> bool:
        if self._left is None:
            return True
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


def process_share(job: tuple) -> list:
    """One process's clients (threads); returns their records."""
    workload, clients, requests, duration, seed, tag = job
    budget = Budget(requests)
    connections = [TritonClient(workload.url, workload.protocol) for _ in range(clients)]
    # The clock starts once every client is connected: on a loaded machine that can take longer than a short level.
    deadline = time.monotonic() + (duration if duration else 86400.0)
    records: list = []
    threads = [
        threading.Thread(target=client_loop, args=(workload, connections[i], f"{tag}.{i}", budget, deadline, seed + i, records))
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_level(workload: Workload, concurrency: int, requests: int | None, duration: float, processes: int, seed: int) -> LevelResult:
    parts = max(1, min(processes, concurrency))
    clients = split(concurrency, parts)
    budgets = split(requests, parts) if requests is not None else [None] * parts
    jobs = [(workload, clients[p], budgets[p], duration, seed + 1000 * p, f"c{concurrency}.p{p}") for p in range(parts)]
    if parts == 1:
        records = process_share(jobs[0])
    else:
        with multiprocessing.get_context("spawn").Pool(parts) as pool:
            records = [r for share in pool.map(process_share, jobs) for r in share]
    if not records:
        raise RunnerError("no request was sent")
    begin = min(r[0] for r in records)
    end = max(r[0] + r[1] for r in records)
    latencies = sorted(r[1] * 1000.0 for r in records if r[2] == "ok")
    ok = len(latencies)
    failures = [r for r in records if r[2] != "ok"]
    return LevelResult(
        concurrency=concurrency,
        requests=len(records),
        seconds=end - begin,
        requests_per_second=ok / (end - begin) if end > begin else 0.0,
        p50_ms=percentile(latencies, 0.50) if ok else float("nan"),
        p95_ms=percentile(latencies, 0.95) if ok else float("nan"),
        p99_ms=percentile(latencies, 0.99) if ok else float("nan"),
        errors=sum(1 for r in failures if r[2] == "error"),
        lost=sum(1 for r in failures if r[2] == "lost"),
        first_error=failures[0][3] if failures else "",
    )


def describe(result: LevelResult) -> str:
    line = (
        f"concurrency {result.concurrency}: {result.requests} requests in {result.seconds:.2f} s, "
        f"{result.requests_per_second:.1f} requests/s, latency p50 {result.p50_ms:.2f} ms, "
        f"p95 {result.p95_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, errors: {result.errors}, lost: {result.lost}"
    )
    return line + (f" (first: {result.first_error})" if result.first_error else "")


def make_workload(args: argparse.Namespace) -> Workload:
    client = TritonClient(args.url, args.protocol)
    try:
        if not client.is_ready():
            raise RunnerError(f"no ready server at {args.url} ({args.protocol})")
        config = client.model_config(args.model)
    finally:
        client.close()
    outputs = tuple(o["name"] for o in config.get("output", []))
    if args.model == ENGINE_MODEL or "input_ids" in {i["name"] for i in config.get("input", [])}:
        dims = [int(d) for d in next(i for i in config["input"] if i["name"] == "input_ids")["dims"]]
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        ragged = dims == [-1]
        length = int(parameters.get("sequence_length", 0)) if ragged else dims[0]
        if length < 1:
            raise RunnerError(f"cannot tell the sequence length of {args.model} from its configuration")
        return Workload(args.url, args.protocol, ENGINE_MODEL if args.model == ENGINE_MODEL else args.model, outputs,
                        sequence_length=length, ragged=ragged, token_types=int(parameters.get("token_types", 2)))
    if args.squad_json:
        pairs = tuple((e.question_text, " ".join(e.doc_tokens)) for e in squad_examples(args.squad_json))
        if not pairs:
            raise RunnerError(f"{args.squad_json} holds no questions")
    else:
        pairs = ((EXAMPLE_QUESTION, EXAMPLE_PASSAGE),)
    return Workload(args.url, args.protocol, args.model, outputs, pairs=pairs)


def plot(results: list[LevelResult], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [r.concurrency for r in results]
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        latency.plot(levels, [getattr(r, name) for r in results], marker="o", label=name.split("_")[0])
    latency.set(xscale="log", xlabel="concurrent clients", ylabel="latency, ms", title="Latency")
    latency.legend()
    throughput.plot(levels, [r.requests_per_second for r in results], marker="o")
    throughput.set(xscale="log", xlabel="concurrent clients", ylabel="requests/s", title="Throughput")
    for axis in (latency, throughput):
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.grid(True, alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"concurrency levels must be at least 1, got {text!r}")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="127.0.0.1:8000", help="HOST:PORT of the server (loopback only)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http", help="http (default) or grpc")
    parser.add_argument("--model", default=QA_MODEL, help=f"{QA_MODEL} (text, default) or {ENGINE_MODEL} (random token rows)")
    parser.add_argument("--concurrency", type=parse_levels, default=[1], help="Concurrent clients; a list such as 1,16,64 runs one level each")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--requests", type=int, help="Requests per level, in all")
    amount.add_argument("--duration", type=float, help="Seconds per level")
    parser.add_argument("--warm-up", type=float, default=0.0, help="Seconds of unmeasured load before each level (default: 0)")
    parser.add_argument("--processes", type=int, default=1, help="Client processes sharing the clients (default: 1)")
    parser.add_argument("-sq", "--squad-json", default="", help=f"{QA_MODEL}: ask this SQuAD file's questions (default: one example)")
    parser.add_argument("--seed", type=int, default=12345, help="Seed of the request mix")
    parser.add_argument("--json", default="", help="Write the results to this JSON file")
    parser.add_argument("--plot", default="", help="Write a latency/throughput vs concurrency plot (PNG)")
    return parser


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.requests is not None and args.requests < 1:
        raise RunnerError(f"--requests must be at least 1, got {args.requests}")
    if args.duration is not None and not 0 < args.duration <= 3600:
        raise RunnerError(f"--duration must be in (0, 3600] seconds, got {args.duration}")
    if not 0 <= args.warm_up <= 600 or args.processes < 1:
        raise RunnerError("--warm-up must be in [0, 600] seconds and --processes at least 1")
    for output in (args.json, args.plot):
        if output:
            check_writable_output(output)
    check_loopback(args.url)
    workload = make_workload(args)
    results = []
    for level in args.concurrency:
        if args.warm_up:
            run_level(workload, level, None, args.warm_up, args.processes, args.seed + 7)
        result = run_level(workload, level, args.requests, args.duration or 0.0, args.processes, args.seed)
        print(describe(result), flush=True)
        results.append(result)
    if args.json:
        report = {"url": args.url, "protocol": args.protocol, "model": args.model, "levels": [asdict(r) for r in results]}
        write_text_atomically(args.json, json.dumps(report, indent=2))
    if args.plot:
        plot(results, args.plot, f"{args.model} over {args.protocol}")
    return 0 if all(r.lost == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
