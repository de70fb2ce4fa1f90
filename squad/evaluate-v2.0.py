#!/usr/bin/env python3
"""SQuAD v2.0 evaluation: exact/F1 overall and split into answerable (HasAns) and unanswerable
(NoAns) questions, optional best no-answer thresholds and precision-recall plots.

An unanswerable question's only gold answer is "".  A prediction counts as "no answer" when its
no-answer probability (``--na-prob-file``, 0 by default) exceeds ``--na-prob-thresh``.
Questions without a prediction are reported and left out of every total.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import math
import os
import sys

import squad_metrics as metrics

PROG = "Official evaluation script for SQuAD version 2.0."


def raw_scores(questions, predictions):
    """Per-question exact and F1 (0..1) against the best gold answer; (exact, f1, has_answer)."""
    exact, f1, has_answer = {}, {}, {}
    for qid, answers in questions:
        has_answer[qid] = bool(answers)
        gold = [answer for answer in answers if metrics.normalize_answer(answer)] or [""]
        if qid not in predictions:
            print(f"Missing prediction for {qid}")
            continue
        prediction = predictions[qid]
        exact[qid] = max(metrics.exact_match(prediction, answer) for answer in gold)
        f1[qid] = max(metrics.f1(prediction, answer, empty_matches_empty=True) for answer in gold)
    return exact, f1, has_answer


def apply_no_answer_threshold(scores, na_probs, has_answer, threshold):
    """Questions predicted unanswerable score 1 if they are, 0 if they are not."""
    return {
        qid: float(not has_answer[qid]) if na_probs[qid] > threshold else score for qid, score in scores.items()
    }


def summary(exact, f1, qids) -> collections.OrderedDict:
    total = len(qids)
    return collections.OrderedDict(
        [
            ("exact", 100.0 * sum(exact[qid] for qid in qids) / total),
            ("f1", 100.0 * sum(f1[qid] for qid in qids) / total),
            ("total", total),
        ]
    )


def add_prefixed(target, values, prefix) -> None:
    for key, value in values.items():
        target[f"{prefix}_{key}"] = value


def best_threshold(predictions, scores, na_probs, has_answer):
    """The no-answer threshold that maximizes the score, and that score (percent).

    Starts from answering nothing (every unanswerable question right) and lowers the
    no-answer bar question by question in order of no-answer probability.
    """
    score = best = sum(1 for answerable in has_answer.values() if not answerable)
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            score += scores[qid]
        elif predictions[qid]:
            score -= 1
        if score > best:
            best, best_thresh = score, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def average_precision(scores, na_probs, has_answer, num_answerable, plt=None, image=None, title=None):
    """Area under the precision-recall curve of ranking questions by no-answer probability."""
    ranked = sorted((qid for qid in na_probs if qid in scores), key=lambda k: na_probs[k])
    true_pos = area = 0.0
    precisions, recalls = [1.0], [0.0]
    for i, qid in enumerate(ranked):
        if has_answer[qid]:
            true_pos += scores[qid]
        precision = true_pos / (i + 1)
        recall = true_pos / num_answerable
        # A threshold can only sit between different probabilities.
        if i == len(ranked) - 1 or na_probs[qid] != na_probs[ranked[i + 1]]:
            area += precision * (recall - recalls[-1])
            precisions.append(precision)
            recalls.append(recall)
    if plt is not None:
        plt.step(recalls, precisions, color="b", alpha=0.2, where="post")
        plt.fill_between(recalls, precisions, step="post", alpha=0.2, color="b")
        plt.xlabel("Recall")
        plt.ylabel("Precision")
        plt.xlim([0.0, 1.05])
        plt.ylim([0.0, 1.05])
        plt.title(title)
        save_figure(plt, image)
    return {"ap": 100.0 * area}


def save_figure(plt, path) -> None:
    image = io.BytesIO()
    plt.savefig(image, format="png")
    plt.clf()
    metrics.write_bytes_atomically(path, image.getvalue())


def precision_recall_analysis(out_eval, exact, f1, na_probs, has_answer, plt, image_dir) -> None:
    os.makedirs(image_dir, exist_ok=True)
    num_answerable = sum(1 for answerable in has_answer.values() if answerable)
    if num_answerable == 0:
        return
    oracle = {qid: float(answerable) for qid, answerable in has_answer.items()}
    curves = (
        ("pr_exact", exact, "Precision-Recall curve for Exact Match score"),
        ("pr_f1", f1, "Precision-Recall curve for F1 score"),
        ("pr_oracle", oracle, "Oracle Precision-Recall curve (binary task of HasAns vs. NoAns)"),
    )
    for name, scores, title in curves:
        image = os.path.join(image_dir, f"{name}.png")
        add_prefixed(out_eval, average_precision(scores, na_probs, has_answer, num_answerable, plt, image, title), name)


def no_answer_histogram(na_probs, qids, plt, image_dir, name) -> None:
    if not qids:
        return
    values = [na_probs[qid] for qid in qids]
    plt.hist(values, weights=[1.0 / len(values)] * len(values), bins=20, range=(0.0, 1.0))
    plt.xlabel("Model probability of no-answer")
    plt.ylabel("Proportion of dataset")
    plt.title(f"Histogram of no-answer probability: {name}")
    save_figure(plt, os.path.join(image_dir, f"na_prob_hist_{name}.png"))


def evaluate(dataset_json, data_path, predictions, na_probs=None, na_prob_thresh=1.0, plt=None, image_dir=None):
    """The evaluation dictionary, keys in the order the official script writes them."""
    exact_raw, f1_raw, has_answer = raw_scores(metrics.iter_questions(dataset_json, data_path), predictions)
    if not exact_raw:
        raise metrics.EvaluationInputError(f"{data_path}: no question of the dataset has a prediction")
    with_na_file = na_probs is not None
    if not with_na_file:
        na_probs = {qid: 0.0 for qid in predictions}
    missing = next((qid for qid in exact_raw if qid not in na_probs), None)
    if missing is not None:
        raise metrics.EvaluationInputError(f"no-answer probabilities lack question {missing}")
    exact = apply_no_answer_threshold(exact_raw, na_probs, has_answer, na_prob_thresh)
    f1 = apply_no_answer_threshold(f1_raw, na_probs, has_answer, na_prob_thresh)
    out_eval = summary(exact, f1, list(exact))
    has_ans = [qid for qid in exact if has_answer[qid]]
    no_ans = [qid for qid in exact if not has_answer[qid]]
    if has_ans:
        add_prefixed(out_eval, summary(exact, f1, has_ans), "HasAns")
    if no_ans:
        add_prefixed(out_eval, summary(exact, f1, no_ans), "NoAns")
    if with_na_file:
        out_eval["best_exact"], out_eval["best_exact_thresh"] = best_threshold(predictions, exact_raw, na_probs, has_answer)
        out_eval["best_f1"], out_eval["best_f1_thresh"] = best_threshold(predictions, f1_raw, na_probs, has_answer)
        if image_dir:
            precision_recall_analysis(out_eval, exact_raw, f1_raw, na_probs, has_answer, plt, image_dir)
            all_qids = [qid for qid in has_answer if qid in na_probs]
            no_answer_histogram(na_probs, [q for q in all_qids if has_answer[q]], plt, image_dir, "hasAns")
            no_answer_histogram(na_probs, [q for q in all_qids if not has_answer[q]], plt, image_dir, "noAns")
    return out_eval


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(PROG)
    parser.add_argument("data_file", metavar="data.json", help="SQuAD dataset json")
    parser.add_argument("pred_file", metavar="pred.json", help="predictions json: question id -> answer text")
    parser.add_argument("--out-file", "-o", metavar="eval.json", help="write the metrics here instead of stdout")
    parser.add_argument("--na-prob-file", "-n", metavar="na_prob.json", help="question id -> no-answer probability")
    parser.add_argument(
        "--na-prob-thresh", "-t", type=float, default=1.0, help='answer "" above this no-answer probability (default 1.0)'
    )
    parser.add_argument("--out-image-dir", "-p", metavar="out_images", default=None, help="save precision-recall plots here")
    parser.add_argument("--verbose", "-v", action="store_true")
    if not (sys.argv[1:] if argv is None else argv):
        parser.print_help()
        sys.exit(1)
    return parser.parse_args(argv)


@metrics.exit_on_interrupt
def main(argv=None) -> int:
    args = parse_args(argv)
    if math.isnan(args.na_prob_thresh):
        print("error: --na-prob-thresh is NaN, which no probability exceeds", file=sys.stderr)
        return 1
    plt = None
    if args.out_image_dir:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    try:
        if args.out_file:
            metrics.check_output_path(args.out_file)
        dataset_json = metrics.load_json_file(args.data_file)
        predictions = metrics.load_string_map(args.pred_file, str, "prediction")
        na_probs = None
        if args.na_prob_file:
            na_probs = metrics.load_string_map(args.na_prob_file, (int, float), "no-answer probability")
        out_eval = evaluate(dataset_json, args.data_file, predictions, na_probs, args.na_prob_thresh, plt, args.out_image_dir)
    except (metrics.EvaluationInputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.out_file:
        try:
            metrics.write_text_atomically(args.out_file, json.dumps(out_eval))
        except OSError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    else:
        print(json.dumps(out_eval, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
