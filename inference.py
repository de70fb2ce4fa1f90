#!/usr/bin/env python3
"""
Answers a question about a passage with a prebuilt BERT QA engine (TensorRT or portable).
Without a question it asks interactively; with -sq it answers a whole SQuAD file and writes
the predictions for squad/evaluate-v1.1.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

import helpers.data_processing as dp
from helpers.cli import (
    RunnerError,
    check_writable_output,
    exit_on_error,
    parse_known_options,
    read_text_file,
    squad_examples,
    write_text_atomically,
)
from helpers.question_answering import (
    EXIT_COMMANDS,
    PASSAGE_PROMPT,
    QUESTION_PROMPT,
    QuestionAnswerer,
    QuestionError,
    check_sizes,
    escape_controls,
    format_answer,
    squad_predictions,
)
from helpers.runner import EngineRunner


def add_question_options(parser: argparse.ArgumentParser) -> None:
    """The options from -p to --n-best-size, shared with inference_c.py (docs/SPEC.md "inference.py options")."""
    parser.add_argument("-p", "--passage", nargs="*", default="", help="Text of the passage")
    parser.add_argument("-pf", "--passage-file", default="", help="File whose whole text is the passage")
    parser.add_argument("-q", "--question", nargs="*", default="", help="Text of the question")
    parser.add_argument("-qf", "--question-file", default="", help="File whose whole text is the question")
    parser.add_argument("-sq", "--squad-json", default="", help="SQuAD json file to answer in full")
    parser.add_argument("-o", "--output-prediction-file", default="./predictions.json", help="Where -sq writes its predictions")
    parser.add_argument(
        "-v", "--vocab-file", help="The model's vocab.txt, its tokenizer.json, or the checkpoint folder holding them"
    )
    parser.add_argument("-s", "--sequence-length", default=128, type=int, help="Maximum sequence length (default: 128)")
    parser.add_argument("--max-query-length", default=64, type=int, help="Questions are truncated to this many tokens")
    parser.add_argument("--max-answer-length", default=30, type=int, help="Longest answer, in tokens")
    parser.add_argument("--n-best-size", default=20, type=int, help="Number of candidate answers kept")


def build_parser(description: str | None = __doc__, with_batch_size: bool = True) -> argparse.ArgumentParser:
    """The options of docs/SPEC.md "inference.py options" (inference_varseqlen.py shares them, without -b)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-e", "--engine", help="Path to the BERT engine (TensorRT plan or portable engine)")
    if with_batch_size:
        parser.add_argument("-b", "--batch-size", default=1, type=int, help="Batch size; each feature is replicated this many times")
    add_question_options(parser)
    parser.add_argument("--doc-stride", default=128, type=int, help="Stride between the windows of a long passage")
    parser.add_argument("--device", default=None, help="Portable engines only: cpu, cuda or cuda:N (default: DEMOBERT_DEVICE, else CUDA if present)")
    return parser


def read_prompt(prompt: str) -> str | None:
    """One line typed by the user; None on Ctrl-D or an empty line."""
    try:
        text = input(prompt)
    except EOFError:
        print()
        return None
    return text if text.strip() else None


def write_predictions(predictions: collections.OrderedDict[str, str], output_path: str) -> None:
    write_text_atomically(output_path, json.dumps(predictions, indent=4))
    print(f"\nOutput dump to {output_path}")


def answer_squad_examples(answerer: QuestionAnswerer, examples: list, output_path: str) -> None:
    from tqdm import tqdm

    progress = tqdm(examples, desc="SQuAD", unit="question", file=sys.stderr, disable=not sys.stderr.isatty())
    write_predictions(squad_predictions(answerer, progress, warn=lambda line: tqdm.write(line, file=sys.stderr)), output_path)


def answer_interactively(answerer: QuestionAnswerer, doc_tokens: list[str], batch_size: int) -> None:
    """Answer typed questions until exit/quit, an empty line or Ctrl-D; a question that cannot be
    answered is explained and the next one asked."""
    question = read_prompt(QUESTION_PROMPT)
    while question is not None and question.strip() not in EXIT_COMMANDS:
        try:
            print(format_answer(answerer.answer(doc_tokens, question), batch_size))
        except QuestionError as err:
            print(f"Cannot answer this question: {err}. Try another one.", file=sys.stderr)
        question = read_prompt(QUESTION_PROMPT)


def check_engine_and_vocabulary(args: argparse.Namespace) -> None:
    if not args.engine:
        raise RunnerError("no engine given; pass one with -e/--engine")
    if not args.vocab_file:
        raise RunnerError("no vocabulary given; pass the model's vocab.txt, tokenizer.json or folder with -v/--vocab-file")


def check_option_sizes(args: argparse.Namespace) -> None:
    """The sizes of add_question_options (and --doc-stride where the parser has it) are positive."""
    check_sizes(
        max_seq_length=args.sequence_length,
        doc_stride=getattr(args, "doc_stride", 1),
        max_query_length=args.max_query_length,
        n_best_size=args.n_best_size,
        max_answer_length=args.max_answer_length,
    )


def read_question_inputs(args: argparse.Namespace) -> tuple[str | None, str | None, list | None]:
    """(passage, question, SQuAD examples) of the options; the examples only without a passage."""
    passage = None
    if args.passage != "":
        passage = " ".join(args.passage)
    elif args.passage_file != "":
        passage = read_text_file(args.passage_file, "passage")
    question = None
    if args.question != "":
        question = " ".join(args.question)
    elif args.question_file != "":
        question = read_text_file(args.question_file, "question")
    examples = None
    if passage is None and args.squad_json != "":
        check_writable_output(args.output_prediction_file)
        examples = squad_examples(args.squad_json)
    return passage, question, examples


def answer_passage(answerer: QuestionAnswerer, passage: str | None, question: str | None) -> None:
    """Answer ``question``, or questions typed in, about ``passage`` (asked for when None)."""
    if passage is None:
        passage = read_prompt(PASSAGE_PROMPT)
        if passage is None:
            return
    doc_tokens = dp.convert_doc_tokens(passage)
    if question is None:
        answer_interactively(answerer, doc_tokens, answerer.batch_size)
        return
    print(f"\nPassage: {escape_controls(passage)}")
    print(f"\nQuestion: {escape_controls(question)}")
    print(format_answer(answerer.answer(doc_tokens, question), answerer.batch_size))


def run(args: argparse.Namespace) -> int:
    """Answer the question(s) of parsed options; shared with inference_varseqlen.py."""
    check_engine_and_vocabulary(args)
    if args.batch_size < 1:
        raise RunnerError(f"-b/--batch-size must be a positive integer, got {args.batch_size}")
    check_option_sizes(args)

    passage, question, examples = read_question_inputs(args)

    runner = EngineRunner(args.engine, device=args.device)
    answerer = QuestionAnswerer(
        runner,
        args.vocab_file,
        batch_size=args.batch_size,
        max_seq_length=args.sequence_length,
        doc_stride=args.doc_stride,
        max_query_length=args.max_query_length,
        n_best_size=args.n_best_size,
        max_answer_length=args.max_answer_length,
    )
    if examples is not None:
        answer_squad_examples(answerer, examples, args.output_prediction_file)
        return 0

    answer_passage(answerer, passage, question)
    return 0


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = parse_known_options(build_parser(), argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
