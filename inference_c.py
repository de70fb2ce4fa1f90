#!/usr/bin/env python3
"""
Answers a question about a passage like inference.py, running TensorRT engines through the C++
module infer_c (built into build/ by infer_c/build.sh) with an optional CUDA graph. Portable engines
run through the Python engine runner, whose CUDA graph --enable-graph turns on as well.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
# infer_c is built into build/ next to this script.
sys.path.insert(0, os.path.join(SCRIPT_DIR, "build"))

from helpers.cli import RunnerError, exit_on_error, parse_known_options  # noqa: E402
from helpers.model_info import ModelInfo  # noqa: E402
from helpers.question_answering import QuestionAnswerer, squad_predictions  # noqa: E402
from helpers.runner import EngineRunner, engine_backend, read_engine_file  # noqa: E402
from inference import (  # noqa: E402
    add_question_options,
    answer_passage,
    check_engine_and_vocabulary,
    check_option_sizes,
    read_question_inputs,
    write_predictions,
)

# The C++ front end has no --doc-stride option.
DOC_STRIDE = 128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-e", "--engine", help="Path to the BERT engine (TensorRT plan or portable engine)")
    add_question_options(parser)
    parser.add_argument("--enable-graph", action="store_true", help="Replay each inference as a captured CUDA graph")
    parser.add_argument("--device", default=None, help="Portable engines only: cpu, cuda or cuda:N (default: DEMOBERT_DEVICE, else CUDA if present)")
    return parse_known_options(parser, argv)


class InferCRunner:
    """The part of EngineRunner that QuestionAnswerer drives, over ``infer_c.bert_inf`` (batch 1).

    Features go in whole, padding included, as in the original C++ front end; a variable-length
    engine therefore runs one sequence of the full length, and its packed output is handed back in
    the fixed-length layout ``[1, S, 2, 1, 1]``.
    """

    # QuestionAnswerer always sees the fixed-length layout (see above).
    varseqlen = False
    # A TensorRT plan's weights cannot be inspected.
    word_embedding_rows = None
    # infer_c does not hand back the engine's name, where the builders record the model: a TensorRT
    # plan run through it is read as BERT with a WordPiece vocabulary.
    model = ModelInfo()

    def __init__(self, engine_path: str, sequence_length: int, enable_graph: bool):
        try:
            bert_inf = importlib.import_module("infer_c").bert_inf
        # Without build/infer_c*.so, `import infer_c` finds the source folder infer_c/ instead.
        except (ImportError, AttributeError):
            raise RunnerError(
                "this engine is a TensorRT plan, which inference_c.py runs through the C++ module infer_c, "
                "but build/ holds no infer_c module; build it with infer_c/build.sh (see infer_c/README.md)"
            ) from None
        self.sequence_length = sequence_length
        self._inputs: dict[str, np.ndarray] = {}
        self._logits: np.ndarray | None = None
        sys.stdout.flush()  # the C++ logger writes to the same stdout
        try:
            self.bert = bert_inf(engine_path, 1, sequence_length, enable_graph)
        except (RuntimeError, ValueError) as err:
            raise RunnerError(str(err)) from None

    def activate(self, batch_size: int, sequence_length: int, total_tokens: int | None = None) -> int:
        if sequence_length != self.sequence_length:
            raise RunnerError(f"infer_c was set up for sequence length {self.sequence_length}, not {sequence_length}")
        try:
            self.bert.prepare(batch_size)
        except (RuntimeError, ValueError) as err:
            raise RunnerError(str(err)) from None
        return 0

    def copy_inputs(self, arrays: Mapping[str, Any]) -> None:
        self._inputs = {name: np.ascontiguousarray(value, dtype=np.int32).ravel() for name, value in arrays.items()}

    def execute(self) -> None:
        """One inference; it returns with the logits on the host."""
        sys.stdout.flush()
        try:
            self._logits = self.bert.run(self._inputs["input_ids"], self._inputs["segment_ids"], self._inputs["input_mask"])
        except (RuntimeError, ValueError) as err:
            raise RunnerError(str(err)) from None

    def synchronize(self) -> None:
        """Nothing to wait for: execute() already copied the logits back."""

    def output_array(self) -> np.ndarray:
        """The float32 logits of the last execution, in the fixed-length layout."""
        assert self._logits is not None, "execute() first"
        logits = np.asarray(self._logits, dtype=np.float32)
        if logits.ndim == 1:
            # Variable-length output [2, T]: T start logits, then T end logits.
            tokens = logits.size // 2
            logits = np.stack([logits[:tokens], logits[tokens:]], axis=-1).reshape(1, tokens, 2, 1, 1)
        return logits


# Enough of an engine file to tell a portable engine from a TensorRT plan.
ENGINE_HEADER_BYTES = 64


def engine_kind(path: str) -> str:
    """'tensorrt' or 'portable', from the first bytes of the engine file."""
    try:
        with open(path, "rb") as engine_file:
            head = engine_file.read(ENGINE_HEADER_BYTES)
    except OSError:
        read_engine_file(path)  # raises the runner's one-line error for this path
        raise
    return engine_backend(head)


def make_runner(args: argparse.Namespace) -> Any:
    """InferCRunner for a TensorRT plan, EngineRunner for a portable engine."""
    if engine_kind(args.engine) == "tensorrt":
        return InferCRunner(args.engine, args.sequence_length, args.enable_graph)
    return EngineRunner(args.engine, device=args.device, enable_graph=args.enable_graph)


def counted(examples: list) -> Iterator[Any]:
    """The examples, printing the C++ front end's "Processing example n of N" line before each."""
    for number, example in enumerate(examples, start=1):
        print(f"Processing example {number} of {len(examples)}", end="\r", flush=True)
        yield example


def answer_squad_examples(answerer: QuestionAnswerer, examples: list, output_path: str) -> None:
    write_predictions(squad_predictions(answerer, counted(examples), warn=lambda line: print(line, file=sys.stderr)), output_path)


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_engine_and_vocabulary(args)
    check_option_sizes(args)

    passage, question, examples = read_question_inputs(args)

    answerer = QuestionAnswerer(
        make_runner(args),
        args.vocab_file,
        batch_size=1,
        max_seq_length=args.sequence_length,
        doc_stride=DOC_STRIDE,
        max_query_length=args.max_query_length,
        n_best_size=args.n_best_size,
        max_answer_length=args.max_answer_length,
    )
    if examples is not None:
        answer_squad_examples(answerer, examples, args.output_prediction_file)
        return 0

    answer_passage(answerer, passage, question)
    return 0


if __name__ == "__main__":
    sys.exit(main())
