#!/usr/bin/env python3
"""Asks the served ``bert_qa`` model a question about a passage, or answers a whole SQuAD file.

Prints the same answer block as inference.py; with -sq it sends the questions concurrently and
writes predictions.json for squad/evaluate-v1.1.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from helpers.cli import RunnerError, check_writable_output, exit_on_error, read_text_file, squad_examples, write_text_atomically  # noqa: E402
from serving import QA_MODEL  # noqa: E402
from serving.triton_client import PROTOCOLS, Reply, TritonClient  # noqa: E402


def qa_inputs(question: str, context: str) -> dict[str, np.ndarray]:
    return {
        "question": np.array([[question.encode("utf-8")]], dtype=np.object_),
        "context": np.array([[context.encode("utf-8")]], dtype=np.object_),
    }


def ask(client: TritonClient, question: str, context: str, model: str = QA_MODEL, request_id: str = "") -> Reply:
    return client.infer(model, qa_inputs(question, context), ["answer", "probability"], request_id=request_id)


def answer_of(reply: Reply) -> tuple[str, float]:
    if reply.error is not None:
        raise RunnerError(f"the server answered with an error: {reply.error}")
    return reply.outputs["answer"].reshape(-1)[0].decode("utf-8"), float(reply.outputs["probability"].reshape(-1)[0])


def format_reply(text: str, probability: float, seconds: float) -> str:
    """inference.py's framed block, timed by the request's round trip."""
    return "\n".join(
        [
            "------------------------",
            f"Running inference in {1.0 / seconds:.3f} Sentences/Sec",
            "------------------------",
            f"Answer: '{text}'",
            f"With probability: {probability * 100.0:.3f}",
            f"Round-trip time: {seconds * 1000.0:.3f} ms",
        ]
    )


def answer_squad(url: str, protocol: str, model: str, path: str, output: str, concurrency: int) -> None:
    """Answer every question of a SQuAD file through the server, ``concurrency`` at a time."""
    examples = squad_examples(path)
    local = threading.local()
    clients: list[TritonClient] = []
    lock = threading.Lock()

    def answer(example) -> tuple[str, str]:
        if not hasattr(local, "client"):
            local.client = TritonClient(url, protocol)
            with lock:
                clients.append(local.client)
        reply = ask(local.client, example.question_text, " ".join(example.doc_tokens), model, request_id=example.id)
        return example.id, answer_of(reply)[0]

    predictions: collections.OrderedDict[str, str] = collections.OrderedDict()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for example_id, text in pool.map(answer, examples):
                predictions[example_id] = text
    finally:
        for client in clients:
            client.close()
    write_text_atomically(output, json.dumps(predictions, indent=4))
    print(f"\nOutput dump to {output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="127.0.0.1:8000", help="HOST:PORT of the server's HTTP (or, with --protocol grpc, gRPC) endpoint")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http", help="http (default) or grpc")
    parser.add_argument("--model", default=QA_MODEL, help=f"Served text model (default: {QA_MODEL})")
    parser.add_argument("-p", "--passage", nargs="*", default="", help="Text of the passage")
    parser.add_argument("-pf", "--passage-file", default="", help="File whose whole text is the passage")
    parser.add_argument("-q", "--question", nargs="*", default="", help="Text of the question")
    parser.add_argument("-sq", "--squad-json", default="", help="SQuAD json file to answer in full")
    parser.add_argument("-o", "--output-prediction-file", default="./predictions.json", help="Where -sq writes its predictions")
    parser.add_argument("--concurrency", type=int, default=16, help="Requests in flight with -sq (default: 16)")
    return parser


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.concurrency < 1:
        raise RunnerError(f"--concurrency must be at least 1, got {args.concurrency}")
    passage = " ".join(args.passage) if args.passage else (read_text_file(args.passage_file, "passage") if args.passage_file else None)
    if passage is None:
        if not args.squad_json:
            raise RunnerError("give a passage (-p or -pf) and a question (-q), or a SQuAD file (-sq)")
        check_writable_output(args.output_prediction_file)
        answer_squad(args.url, args.protocol, args.model, args.squad_json, args.output_prediction_file, args.concurrency)
        return 0
    if not args.question:
        raise RunnerError("no question given; pass one with -q")
    question = " ".join(args.question)
    client = TritonClient(args.url, args.protocol)
    try:
        started = time.perf_counter()
        reply = ask(client, question, passage, args.model)
        seconds = time.perf_counter() - started
    finally:
        client.close()
    text, probability = answer_of(reply)
    print(f"\nPassage: {passage}")
    print(f"\nQuestion: {question}")
    print(format_reply(text, probability, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
