#!/usr/bin/env python3
"""SQuAD v1.1 evaluation with a pass/fail line against a reference F1.

Prints ``&&&& PASSED ...`` (or ``&&&& FAILED ...`` when F1 is more than 0.5 below the reference)
and then ``{"exact_match": EM, "f1": F1}``, both percentages over all questions of the dataset;
a question without a prediction scores 0 and is reported on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

import squad_metrics as metrics

EXPECTED_VERSION = "1.1"
# F1 may fall this many points below the reference and still pass.
F1_TOLERANCE = 0.5
STATUS_LINE = "&&&& {} TensorRT BERT Squad Accuracy matches reference."


def evaluate(questions, predictions: dict[str, str]) -> dict[str, float]:
    """EM and F1 (percent) over ``questions``: (id, gold answers) pairs, e.g. from iter_questions."""
    exact_total = f1_total = 0.0
    count = 0
    for qid, gold_answers in questions:
        count += 1
        if qid not in predictions:
            print(f"Unanswered question {qid} will receive score 0.", file=sys.stderr)
            continue
        prediction = predictions[qid]
        exact_total += max((metrics.exact_match(prediction, gold) for gold in gold_answers), default=0)
        f1_total += max(
            (metrics.f1(prediction, gold, empty_matches_empty=False) for gold in gold_answers), default=0.0
        )
    if count == 0:
        raise metrics.EvaluationInputError("dataset has no questions")
    return {"exact_match": 100.0 * exact_total / count, "f1": 100.0 * f1_total / count}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluation for SQuAD " + EXPECTED_VERSION)
    parser.add_argument("dataset_file", help="SQuAD v1.1 dataset json")
    parser.add_argument("prediction_file", help="predictions json: question id -> answer text")
    parser.add_argument("f1_acc", type=float, help="reference F1 (percent)")
    return parser.parse_args(argv)


@metrics.exit_on_interrupt
def main(argv=None) -> int:
    args = parse_args(argv)
    # NaN compares false with every F1 and would always pass.
    if not 0.0 <= args.f1_acc <= 100.0:
        print(f"error: f1_acc is a reference F1 percentage from 0 to 100, got {args.f1_acc}", file=sys.stderr)
        return 1
    try:
        dataset_json = metrics.load_json_file(args.dataset_file)
        version = dataset_json.get("version") if isinstance(dataset_json, dict) else None
        if version != EXPECTED_VERSION:
            print(f"Evaluation expects v-{EXPECTED_VERSION}, but got dataset with v-{version}", file=sys.stderr)
        predictions = metrics.load_string_map(args.prediction_file, str, "prediction")
        scores = evaluate(metrics.iter_questions(dataset_json, args.dataset_file), predictions)
    except metrics.EvaluationInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(STATUS_LINE.format("FAILED" if scores["f1"] < args.f1_acc - F1_TOLERANCE else "PASSED"))
    print(json.dumps(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
