"""Scoring rules and input checks shared by ``evaluate-v1.1.py`` and ``evaluate-v2.0.py``.

Both evaluators normalize answers the same way (lower-case, drop ASCII punctuation, drop the
articles a/an/the, collapse whitespace) and score exact match and bag-of-tokens F1 against the
best of the gold answers.  They differ only where an answer normalizes to nothing: SQuAD v1.1
scores F1 0 there, SQuAD v2.0 scores 1 when prediction and gold are both empty.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import string
import sys
from collections.abc import Iterator
from typing import Any

# The evaluators run as scripts from squad/; the suite's file rules (helpers.files) live one folder up.
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPOSITORY not in sys.path:
    sys.path.append(_REPOSITORY)
from helpers.cli import exit_on_interrupt  # noqa: E402, F401  (the evaluators' mains use it)
from helpers.files import (  # noqa: E402, F401  (the evaluators write through these)
    SQUAD_FILE_MAX_BYTES,
    check_output_path,
    read_limited,
    write_bytes_atomically,
    write_text_atomically,
)

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


class EvaluationInputError(ValueError):
    """A dataset, prediction or probability file is unreadable or malformed."""


def normalize_answer(text: str) -> str:
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, ground_truth: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1(prediction: str, ground_truth: str, empty_matches_empty: bool) -> float:
    """Token-overlap F1.  ``empty_matches_empty`` selects v2.0's rule for empty normalizations."""
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    if empty_matches_empty and (not prediction_tokens or not truth_tokens):
        return float(prediction_tokens == truth_tokens)
    common = collections.Counter(prediction_tokens) & collections.Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def _finite_number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is too large for a float")
    return value


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def load_json_file(path: str) -> Any:
    """The JSON content of ``path``; NaN, Infinity and numbers beyond float range are errors, so no
    report can carry them (Python's json module would read them, and write them back)."""
    try:
        text = read_limited(path, SQUAD_FILE_MAX_BYTES, "SQuAD JSON file").decode("utf-8")
        return json.loads(text, parse_float=_finite_number, parse_constant=_reject_constant)
    except OSError as err:
        raise EvaluationInputError(f"{path}: cannot read file ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise EvaluationInputError(f"{path}: not UTF-8 text (invalid byte at offset {err.start})") from err
    except json.JSONDecodeError as err:
        raise EvaluationInputError(f"{path}: malformed JSON at line {err.lineno} column {err.colno} ({err.msg})") from err
    except ValueError as err:
        raise EvaluationInputError(f"{path}: not standard JSON: {err}") from err


def _require(container: Any, key: str, kind: type, where: str, path: str) -> Any:
    if not isinstance(container, dict) or key not in container:
        raise EvaluationInputError(f'{path}: missing "{key}" in {where or "top level"}')
    value = container[key]
    if not isinstance(value, kind):
        raise EvaluationInputError(f"{path}: {where + '.' if where else ''}{key} has the wrong JSON type")
    return value


def iter_questions(dataset_json: Any, path: str) -> Iterator[tuple[str, list[str]]]:
    """(question id, gold answer texts) for every question of a SQuAD file, in file order."""
    for a, article in enumerate(_require(dataset_json, "data", list, "", path)):
        for p, paragraph in enumerate(_require(article, "paragraphs", list, f"data[{a}]", path)):
            for q, qa in enumerate(_require(paragraph, "qas", list, f"data[{a}].paragraphs[{p}]", path)):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                qid = _require(qa, "id", str, where, path)
                answers = _require(qa, "answers", list, where, path)
                yield qid, [_require(answer, "text", str, f"{where}.answers[{i}]", path) for i, answer in enumerate(answers)]


def load_string_map(path: str, value_kind: type | tuple[type, ...], what: str) -> dict[str, Any]:
    """A JSON object mapping question ids to ``value_kind`` values (predictions, probabilities)."""
    content = load_json_file(path)
    if not isinstance(content, dict):
        raise EvaluationInputError(f"{path}: {what} must be a JSON object keyed by question id")
    for qid, value in content.items():
        if not isinstance(value, value_kind) or isinstance(value, bool):
            raise EvaluationInputError(f"{path}: {what} for question {qid} has the wrong JSON type")
    return content
