"""SQuAD reading, feature conversion and answer extraction (docs/SPEC.md "Host processing").

The flow is the original demo's: ``read_squad_json`` (or ``convert_doc_tokens`` on a raw
passage) gives whitespace-split "doc tokens"; ``convert_example_to_features`` turns one question
and its passage into one ``Feature`` per doc-stride window; the engine's start/end logits for
those features go to ``get_predictions``, which returns the answer text cut from the passage.

Bad input raises ``SquadFormatError`` (the SQuAD file) or ``FeatureError`` (the question,
passage or sizes), both ``ValueError`` subclasses with a one-line message naming the file or
field.  A question longer than ``max_query_length`` word pieces is not an error: as in the
original, only its first ``max_query_length`` pieces are used.
"""

from __future__ import annotations

import collections
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import helpers.tokenization as tokenization
from helpers.files import SQUAD_FILE_MAX_BYTES, read_limited

DEFAULT_MAX_QUERY_LENGTH = 64
DEFAULT_DOC_STRIDE = 128
DEFAULT_N_BEST_SIZE = 20
DEFAULT_MAX_ANSWER_LENGTH = 30

Example = collections.namedtuple("Example", ["id", "question_text", "doc_tokens"])
Feature = collections.namedtuple(
    "Feature",
    ["input_ids", "input_mask", "segment_ids", "tokens", "token_to_orig_map", "token_is_max_context"],
)
DocSpan = collections.namedtuple("DocSpan", ["start", "length"])
# One feature's engine output, as get_predictions expects it.
NetworkOutput = collections.namedtuple("NetworkOutput", ["start_logits", "end_logits", "feature_index"])
PrelimPrediction = collections.namedtuple(
    "PrelimPrediction", ["feature_index", "start_index", "end_index", "start_logit", "end_logit"]
)
NbestPrediction = collections.namedtuple("NbestPrediction", ["text", "start_logit", "end_logit"])

# The passage splits on these only; U+00A0 and other spaces stay inside doc tokens (the
# tokenizer treats them as whitespace later, so answers still align).
_DOC_TOKEN_SEPARATORS = re.compile("[ \t\r\n\u202f]+")


class SquadFormatError(ValueError):
    """A SQuAD json file is unreadable or lacks a required field."""


class FeatureError(ValueError):
    """A question/passage cannot be turned into features with the given sizes."""


def convert_doc_tokens(paragraph_text: str) -> list[str]:
    """Split a passage on runs of space, tab, CR, LF and U+202F."""
    return [token for token in _DOC_TOKEN_SEPARATORS.split(paragraph_text) if token]


def _load_json(input_file: str) -> Any:
    try:
        raw = read_limited(input_file, SQUAD_FILE_MAX_BYTES, "SQuAD JSON file")
    except OSError as err:
        raise SquadFormatError(f"{input_file}: cannot read file ({err.strerror or err})") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SquadFormatError(f"{input_file}: not UTF-8 text (invalid byte at offset {err.start})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SquadFormatError(
            f"{input_file}: malformed JSON at line {err.lineno} column {err.colno} ({err.msg})"
        ) from err


def _field(container: Any, key: str, kind: type, where: str, input_file: str) -> Any:
    if not isinstance(container, dict):
        raise SquadFormatError(f"{input_file}: {where or 'top level'} is not a JSON object")
    path = f"{where}.{key}" if where else key
    if key not in container:
        raise SquadFormatError(f'{input_file}: missing "{key}" in {where or "top level"}')
    value = container[key]
    if not isinstance(value, kind):
        raise SquadFormatError(f"{input_file}: {path} must be a JSON {'list' if kind is list else 'string'}")
    return value


def read_squad_json(input_file: str) -> list[Example]:
    """One ``Example`` per question of a SQuAD v1.1 or v2.0 file, in file order.

    Answers and ``is_impossible`` are not read.  All questions of a paragraph share one
    doc-token list.  A file without questions, or with two questions of one id (predictions
    are keyed by id), is a ``SquadFormatError``.
    """
    data = _field(_load_json(input_file), "data", list, "", input_file)
    examples = []
    id_paths: dict[str, str] = {}
    for article_index, article in enumerate(data):
        article_path = f"data[{article_index}]"
        paragraphs = _field(article, "paragraphs", list, article_path, input_file)
        for paragraph_index, paragraph in enumerate(paragraphs):
            paragraph_path = f"{article_path}.paragraphs[{paragraph_index}]"
            context = _field(paragraph, "context", str, paragraph_path, input_file)
            if not context.strip():
                raise SquadFormatError(f"{input_file}: {paragraph_path}.context is empty")
            doc_tokens = convert_doc_tokens(context)
            qas = _field(paragraph, "qas", list, paragraph_path, input_file)
            for qa_index, qa in enumerate(qas):
                qa_path = f"{paragraph_path}.qas[{qa_index}]"
                qid = _field(qa, "id", str, qa_path, input_file)
                question = _field(qa, "question", str, qa_path, input_file)
                if not question.strip():
                    raise SquadFormatError(f"{input_file}: {qa_path}.question is empty (id {qid})")
                if qid in id_paths:
                    raise SquadFormatError(f"{input_file}: {qa_path}.id {qid!r} is also the id of {id_paths[qid]}")
                id_paths[qid] = qa_path
                examples.append(Example(id=qid, question_text=question, doc_tokens=doc_tokens))
    if not examples:
        raise SquadFormatError(f"{input_file}: holds no questions")
    return examples


def doc_windows(num_tokens: int, max_tokens_for_doc: int, doc_stride: int) -> list[DocSpan]:
    """The passage windows: at most ``max_tokens_for_doc`` pieces each, starting ``doc_stride`` apart."""
    spans = []
    start = 0
    while True:
        length = min(num_tokens - start, max_tokens_for_doc)
        spans.append(DocSpan(start=start, length=length))
        if start + length == num_tokens:
            return spans
        start += min(length, doc_stride)


def max_context_windows(doc_spans: Sequence[DocSpan], num_tokens: int) -> list[int]:
    """For every word piece, the span where min(left, right context) + 0.01*length is largest.

    The first span wins a tie.  Computed once per piece instead of once per (span, piece).
    """
    best_span = [-1] * num_tokens
    best_score = [0.0] * num_tokens
    for span_index, span in enumerate(doc_spans):
        end = span.start + span.length - 1
        length_bonus = 0.01 * span.length
        for position in range(span.start, end + 1):
            score = min(position - span.start, end - position) + length_bonus
            if best_span[position] < 0 or score > best_score[position]:
                best_span[position] = span_index
                best_score[position] = score
    return best_span


def check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise FeatureError(f"{name} must be a positive integer, got {value!r}")


def convert_example_to_features(
    doc_tokens: Sequence[str],
    question_text: str,
    tokenizer,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int = DEFAULT_MAX_QUERY_LENGTH,
) -> list[Feature]:
    """``[CLS] question [SEP] passage window [SEP]`` features, one per doc-stride window.

    The question keeps its first ``max_query_length`` word pieces (longer questions are
    truncated, not rejected).  Windows hold ``max_seq_length - len(question) - 3`` pieces and
    start ``doc_stride`` pieces apart.  ``input_ids``/``input_mask``/``segment_ids`` are int32
    arrays zero-padded to ``max_seq_length``; ``token_to_orig_map`` and ``token_is_max_context``
    are keyed by position in the feature and cover the passage pieces only.
    """
    check_positive(max_seq_length=max_seq_length, doc_stride=doc_stride, max_query_length=max_query_length)
    query_tokens = tokenizer.tokenize(question_text)[:max_query_length]
    if not query_tokens:
        raise FeatureError(f"question has no tokens: {question_text!r}")
    max_tokens_for_doc = max_seq_length - len(query_tokens) - 3
    if max_tokens_for_doc < 1:
        raise FeatureError(
            f"max_seq_length {max_seq_length} cannot hold a {len(query_tokens)}-token question "
            f"and any passage (needs at least {len(query_tokens) + 4})"
        )

    tok_to_orig_index = []
    all_doc_tokens = []
    for orig_index, doc_token in enumerate(doc_tokens):
        sub_tokens = tokenizer.tokenize(doc_token)
        tok_to_orig_index.extend([orig_index] * len(sub_tokens))
        all_doc_tokens.extend(sub_tokens)
    if not all_doc_tokens:
        raise FeatureError("passage has no tokens")

    doc_spans = doc_windows(len(all_doc_tokens), max_tokens_for_doc, doc_stride)
    max_context_span = max_context_windows(doc_spans, len(all_doc_tokens))

    head = ["[CLS]", *query_tokens, "[SEP]"]
    head_ids = tokenizer.convert_tokens_to_ids(head)
    doc_ids = tokenizer.convert_tokens_to_ids(all_doc_tokens)
    sep_id = tokenizer.convert_tokens_to_ids(["[SEP]"])
    offset = len(head)

    features = []
    for span_index, span in enumerate(doc_spans):
        span_end = span.start + span.length
        tokens = head + all_doc_tokens[span.start : span_end] + ["[SEP]"]
        num_real = len(tokens)
        input_ids = np.zeros(max_seq_length, dtype=np.int32)
        input_ids[:num_real] = head_ids + doc_ids[span.start : span_end] + sep_id
        input_mask = np.zeros(max_seq_length, dtype=np.int32)
        input_mask[:num_real] = 1
        segment_ids = np.zeros(max_seq_length, dtype=np.int32)
        segment_ids[offset:num_real] = 1
        positions = range(offset, offset + span.length)
        features.append(
            Feature(
                input_ids=input_ids,
                input_mask=input_mask,
                segment_ids=segment_ids,
                tokens=tokens,
                token_to_orig_map=dict(zip(positions, tok_to_orig_index[span.start : span_end])),
                token_is_max_context={
                    position: best == span_index
                    for position, best in zip(positions, max_context_span[span.start : span_end])
                },
            )
        )
    return features


def _best_indexes(logits, n_best_size: int) -> list[int]:
    """Indexes of the ``n_best_size`` largest logits, ties keeping the lower index first."""
    order = np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")
    return order[:n_best_size].tolist()


def get_final_text(pred_text: str, orig_text: str, do_lower_case: bool = True) -> str:
    """Map normalized prediction text back onto the span of ``orig_text`` it came from.

    ``pred_text`` is de-tokenized word pieces (lower-cased, accents stripped, punctuation split
    off), ``orig_text`` the passage words the pieces came from, which may carry extra
    characters (``Smith's`` for ``smith``).  The two are aligned character by character with
    spaces removed; where the alignment cannot be made, ``orig_text`` is returned whole.
    """
    tok_text = " ".join(tokenization.BasicTokenizer(do_lower_case=do_lower_case).tokenize(orig_text))
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text
    end = start + len(pred_text) - 1

    orig_positions = [i for i, char in enumerate(orig_text) if char != " "]
    tok_positions = [i for i, char in enumerate(tok_text) if char != " "]
    # Equal space-free lengths is the sign that the tokenizer only inserted/removed spaces.
    if len(orig_positions) != len(tok_positions):
        return orig_text
    tok_position_to_nonspace = {position: index for index, position in enumerate(tok_positions)}
    if start not in tok_position_to_nonspace or end not in tok_position_to_nonspace:
        return orig_text
    orig_start = orig_positions[tok_position_to_nonspace[start]]
    orig_end = orig_positions[tok_position_to_nonspace[end]]
    return orig_text[orig_start : orig_end + 1]


def _softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(score - top) for score in scores]
    total = sum(exps)
    return [value / total for value in exps]


def _piece_text(tokens: Sequence[str]) -> str:
    """Word pieces back to words: glue ``##`` suffixes and normalize spaces."""
    text = " ".join(tokens).replace(" ##", "").replace("##", "")
    return " ".join(text.split())


def get_predictions(
    doc_tokens: Sequence[str],
    features: Sequence[Feature],
    results: Sequence[Any],
    n_best_size: int = DEFAULT_N_BEST_SIZE,
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
    span_text: Callable[[Any, int, int], str] | None = None,
) -> tuple[str, list[collections.OrderedDict], float]:
    """Best answer, n-best list and null-score difference for one question.

    ``results`` hold ``start_logits``, ``end_logits`` (one per feature position) and
    ``feature_index`` (into ``features``), e.g. ``NetworkOutput``.  The n-best entries are
    OrderedDicts ``text``, ``probability``, ``start_logit``, ``end_logit``.

    As in the original demo the SQuAD v2 null answer is off by default, and the third value is
    then 0.0.  With ``version_2_with_negative=True`` the [CLS] score (the lowest over features)
    competes as the empty answer: the prediction is ``""`` when that score exceeds the best
    non-empty answer's by more than ``null_score_diff_threshold``, and the third value is that
    difference.

    ``span_text(feature, start, end)``, when given, cuts an answer's text out of the passage itself
    (features with character offsets) instead of mapping word pieces back onto ``doc_tokens``.
    """
    check_positive(n_best_size=n_best_size, max_answer_length=max_answer_length)
    prelim = []
    score_null = math.inf
    null_prediction = None
    for result in results:
        feature = features[result.feature_index]
        if version_2_with_negative:
            feature_null_score = result.start_logits[0] + result.end_logits[0]
            if feature_null_score < score_null:
                score_null = feature_null_score
                null_prediction = PrelimPrediction(
                    result.feature_index, 0, 0, result.start_logits[0], result.end_logits[0]
                )
        num_tokens = len(feature.tokens)
        end_indexes = _best_indexes(result.end_logits, n_best_size)
        for start_index in _best_indexes(result.start_logits, n_best_size):
            if start_index >= num_tokens or start_index not in feature.token_to_orig_map:
                continue
            if not feature.token_is_max_context.get(start_index, False):
                continue
            for end_index in end_indexes:
                if end_index >= num_tokens or end_index not in feature.token_to_orig_map:
                    continue
                if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                    continue
                prelim.append(
                    PrelimPrediction(
                        result.feature_index,
                        start_index,
                        end_index,
                        result.start_logits[start_index],
                        result.end_logits[end_index],
                    )
                )
    if null_prediction is not None:
        prelim.append(null_prediction)
    prelim.sort(key=lambda p: p.start_logit + p.end_logit, reverse=True)

    seen_texts = set()
    nbest: list[NbestPrediction] = []
    for pred in prelim:
        if len(nbest) >= n_best_size:
            break
        if pred.start_index == 0:  # the null answer
            text = ""
        else:
            feature = features[pred.feature_index]
            if span_text is not None:
                text = span_text(feature, pred.start_index, pred.end_index)
            else:
                orig_start = feature.token_to_orig_map[pred.start_index]
                orig_end = feature.token_to_orig_map[pred.end_index]
                text = get_final_text(
                    _piece_text(feature.tokens[pred.start_index : pred.end_index + 1]),
                    " ".join(doc_tokens[orig_start : orig_end + 1]),
                )
            if not text:
                continue
        if text in seen_texts:
            continue
        seen_texts.add(text)
        nbest.append(NbestPrediction(text, pred.start_logit, pred.end_logit))

    if null_prediction is not None and "" not in seen_texts:
        nbest.append(NbestPrediction("", null_prediction.start_logit, null_prediction.end_logit))
    best_non_null = next((entry for entry in nbest if entry.text), None)
    if best_non_null is None:
        # No valid span at all: a placeholder answer keeps the output well-formed.
        best_non_null = NbestPrediction("empty", 0.0, 0.0)
        nbest.insert(0, best_non_null)

    probabilities = _softmax([entry.start_logit + entry.end_logit for entry in nbest])
    nbest_json = [
        collections.OrderedDict(
            text=entry.text,
            probability=probability,
            start_logit=float(entry.start_logit),
            end_logit=float(entry.end_logit),
        )
        for entry, probability in zip(nbest, probabilities)
    ]

    if not version_2_with_negative:
        return nbest_json[0]["text"], nbest_json, 0.0
    score_diff = float(score_null - best_non_null.start_logit - best_non_null.end_logit)
    prediction = "" if score_diff > null_score_diff_threshold else best_non_null.text
    return prediction, nbest_json, score_diff
