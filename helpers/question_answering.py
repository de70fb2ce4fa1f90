"""Question answering over an engine: text -> features -> logits -> best span.

Shared by inference.py, the notebook and the variable-length/C++ front ends, so that every
one of them tokenizes, times and post-processes the same way.
"""

from __future__ import annotations

import collections
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

import helpers.data_processing as dp
import helpers.tokenization as tokenization
from helpers import hf_tokenization
from helpers.cli import RunnerError
from helpers.model_info import ModelInfo
from helpers.runner import EngineRunner, NoProfileError

NetworkOutput = collections.namedtuple("NetworkOutput", ["start_logits", "end_logits", "feature_index"])
EXIT_COMMANDS = ["exit", "quit"]
QUESTION_PROMPT = f"Question (to exit, type one of {EXIT_COMMANDS}): "
PASSAGE_PROMPT = "Paragraph: "
# An answer that takes longer than this shows a progress bar of its passage windows on a terminal.
PROGRESS_DELAY_S = 2.0
# The command-line option behind each size of AnswerExtractor, for error messages.
SIZE_OPTIONS = {
    "max_seq_length": "-s/--sequence-length",
    "doc_stride": "--doc-stride",
    "max_query_length": "--max-query-length",
    "n_best_size": "--n-best-size",
    "max_answer_length": "--max-answer-length",
}


class QuestionError(RunnerError):
    """This one question (or its passage) cannot be answered, e.g. it has no word pieces;
    other questions still can."""


# C0 and C1 control characters (terminal escape sequences start with ESC or CSI) and the
# bidirectional overrides and isolates, which reorder what a terminal shows; tab and newline stay.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """``text`` safe to print on a terminal: each control character as a Python escape (``\\x1b``)."""
    return _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def check_sizes(**sizes: int) -> None:
    """RunnerError naming the option of the first size below 1 (keys of SIZE_OPTIONS)."""
    for name, value in sizes.items():
        if value < 1:
            raise RunnerError(f"{SIZE_OPTIONS[name]} must be a positive integer, got {value}")


@dataclass(frozen=True)
class Answer:
    text: str
    probability: float
    nbest: list[Any]
    network_seconds: float
    """Mean time per feature of input copy + execute + synchronize (what Sentences/Sec divides by)."""
    end_to_end_seconds: float
    """Tokenization + all features through the network + post-processing."""


class AnswerExtractor:
    """The text side of question answering: features of a question and passage, and the best
    span from per-feature logits.  Engines are run by :class:`QuestionAnswerer` or a server.

    ``vocab_file`` is a vocab.txt (the demo's WordPiece path), a tokenizer.json or a checkpoint
    folder (``hf_tokenization.vocabulary_source``); ``model`` is what the engine file says about
    its model (``EngineRunner.model``), which decides between them and the segment ids.
    """

    def __init__(
        self,
        vocab_file: str,
        max_seq_length: int = 128,
        doc_stride: int = 128,
        max_query_length: int = 64,
        n_best_size: int = 20,
        max_answer_length: int = 30,
        model: ModelInfo | None = None,
    ):
        check_sizes(
            max_seq_length=max_seq_length,
            doc_stride=doc_stride,
            max_query_length=max_query_length,
            n_best_size=n_best_size,
            max_answer_length=max_answer_length,
        )
        self.model = model or ModelInfo()
        try:
            self.tokenizer = hf_tokenization.load_tokenizer(vocab_file, self.model, tokenization.FullTokenizer)
        except tokenization.VocabError as err:
            raise RunnerError(str(err)) from None
        self.max_seq_length = max_seq_length
        self.doc_stride = doc_stride
        self.max_query_length = max_query_length
        self.n_best_size = n_best_size
        self.max_answer_length = max_answer_length

    def features(self, doc_tokens: list[str], question: str) -> list[Any]:
        try:
            return hf_tokenization.question_features(
                self.tokenizer, doc_tokens, question, self.max_seq_length, self.doc_stride, self.max_query_length,
                self.model.token_types,
            )
        except dp.FeatureError as err:
            raise QuestionError(str(err)) from None

    def best_answer(self, doc_tokens: list[str], features: list[Any], outputs: list[NetworkOutput]) -> tuple[str, float, list[Any]]:
        """(answer text, its probability, n-best list) from the logits of ``features``."""
        span_text = hf_tokenization.answer_text if isinstance(self.tokenizer, hf_tokenization.OffsetTokenizer) else None
        prediction, nbest, _ = dp.get_predictions(
            doc_tokens, features, outputs, self.n_best_size, self.max_answer_length, span_text=span_text
        )
        return prediction, nbest[0]["probability"], nbest


class QuestionAnswerer(AnswerExtractor):
    """Answers questions about passages with one engine, at one batch size and sequence length."""

    def __init__(
        self,
        runner: EngineRunner,
        vocab_file: str,
        batch_size: int = 1,
        max_seq_length: int = 128,
        doc_stride: int = 128,
        max_query_length: int = 64,
        n_best_size: int = 20,
        max_answer_length: int = 30,
    ):
        super().__init__(
            vocab_file, max_seq_length, doc_stride, max_query_length, n_best_size, max_answer_length, runner.model
        )
        if runner.word_embedding_rows is not None:
            try:
                self.tokenizer.check_embedding_rows(runner.word_embedding_rows, vocab_file)
            except tokenization.VocabError as err:
                raise RunnerError(str(err)) from None
        self.runner = runner
        self.batch_size = 1 if runner.varseqlen else batch_size
        # A variable-length engine must take the longest feature, so that no question fails midway.
        try:
            runner.activate(self.batch_size, max_seq_length)
        except NoProfileError:
            what = f"sequence length {max_seq_length}" if runner.varseqlen else f"batch size {self.batch_size}"
            raise RunnerError(
                f"Could not find any profile that can run {what}. " + runner.uncovered_dimension(self.batch_size, max_seq_length)
            ) from None

    def feature_logits(self, feature: Any) -> tuple[np.ndarray, np.ndarray, float]:
        """(start logits, end logits, seconds for copy + execute + sync) of one feature."""
        runner = self.runner
        if runner.varseqlen:
            # Packed input: only the real tokens of the one sequence, no padding.
            length = int(np.sum(feature.input_mask))
            try:
                runner.activate(1, length, total_tokens=length)
            except NoProfileError:
                raise RunnerError(
                    f"Could not find any profile that can run sequence length {length}. " + runner.uncovered_dimension(1, length)
                ) from None
            inputs = {
                "input_ids": np.asarray(feature.input_ids[:length], dtype=np.int32),
                "segment_ids": np.asarray(feature.segment_ids[:length], dtype=np.int32),
                "cu_seqlens": np.array([0, length], dtype=np.int32),
            }
        else:
            inputs = {
                name: np.ascontiguousarray(np.tile(np.asarray(getattr(feature, name), dtype=np.int32), (self.batch_size, 1)))
                for name in ("input_ids", "segment_ids", "input_mask")
            }
        started = time.perf_counter()
        runner.copy_inputs(inputs)
        runner.execute()
        runner.synchronize()
        elapsed = time.perf_counter() - started
        logits = runner.output_array()
        if runner.varseqlen:
            return logits[0].reshape(-1), logits[1].reshape(-1), elapsed
        first = logits[0].reshape(-1, 2)
        return first[:, 0], first[:, 1], elapsed

    def answer(self, doc_tokens: list[str], question: str) -> Answer:
        from tqdm import tqdm

        started = time.perf_counter()
        features = self.features(doc_tokens, question)
        outputs = []
        network_seconds = 0.0
        # A long passage makes many windows (a 1 MB one, thousands): slow answers show progress.
        windows = tqdm(
            features, desc="Passage windows", unit="window", file=sys.stderr, leave=False,
            delay=PROGRESS_DELAY_S, disable=not sys.stderr.isatty(),
        )
        for index, feature in enumerate(windows):
            start_logits, end_logits, elapsed = self.feature_logits(feature)
            if not (np.isfinite(start_logits).all() and np.isfinite(end_logits).all()):
                raise RunnerError(
                    "the engine returned NaN or infinite logits (weights that are not finite, or an FP16 overflow?); "
                    "rebuild it from finite weights"
                )
            network_seconds += elapsed
            outputs.append(NetworkOutput(start_logits=start_logits, end_logits=end_logits, feature_index=index))
        text, probability, nbest = self.best_answer(doc_tokens, features, outputs)
        return Answer(
            text=text,
            probability=probability,
            nbest=nbest,
            network_seconds=network_seconds / max(len(features), 1),
            end_to_end_seconds=time.perf_counter() - started,
        )

    def answer_text(self, passage: str, question: str) -> Answer:
        return self.answer(dp.convert_doc_tokens(passage), question)


def format_answer(answer: Answer, sentences_per_call: int) -> str:
    """The framed result block (docs/SPEC.md "Single-question output"), then the two timing lines this
    re-implementation adds."""
    lines = [
        "------------------------",
        f"Running inference in {sentences_per_call / answer.network_seconds:.3f} Sentences/Sec",
        "------------------------",
        f"Answer: '{escape_controls(answer.text)}'",
        f"With probability: {answer.probability * 100.0:.3f}",
        f"Network time: {answer.network_seconds * 1000.0:.3f} ms per feature",
        f"End-to-end time: {answer.end_to_end_seconds * 1000.0:.3f} ms",
    ]
    return "\n".join(lines)


def squad_predictions(
    answerer: QuestionAnswerer, examples: Iterable[Any], warn: Callable[[str], None]
) -> collections.OrderedDict[str, str]:
    """Answer text by question id, in order.  A question that cannot be answered (QuestionError)
    does not stop the run: its answer is the empty string, and ``warn`` gets a line naming it."""
    predictions: collections.OrderedDict[str, str] = collections.OrderedDict()
    for example in examples:
        try:
            predictions[example.id] = answerer.answer(example.doc_tokens, example.question_text).text
        except QuestionError as err:
            warn(f"warning: question {example.id!r} answered with an empty string: {err}")
            predictions[example.id] = ""
    return predictions
