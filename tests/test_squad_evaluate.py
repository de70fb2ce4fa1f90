"""squad/evaluate-v1.1.py and squad/evaluate-v2.0.py, run as the command lines users run.

v1.1 EM/F1 are compared with torchmetrics' SQuAD metric on random prediction sets whose answers
never normalize to nothing (there torchmetrics follows v2.0's rule, see the hand-worked case);
v2.0 is checked against numbers worked out by hand in the comments.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from squad_fixtures import make_dataset, make_qa, write_json

REPO = Path(__file__).resolve().parents[1]
V1 = REPO / "squad" / "evaluate-v1.1.py"
V2 = REPO / "squad" / "evaluate-v2.0.py"
PASSED = "&&&& PASSED TensorRT BERT Squad Accuracy matches reference."
FAILED = "&&&& FAILED TensorRT BERT Squad Accuracy matches reference."


def run(script: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=120)


CONTENT_WORDS = ["cat", "Dog", "river", "Paris", "1969", "Apollo", "blue", "naïve", "x-ray", "U.S.", "don't", "Élan"]
FILLER = ["the", "a", "an", "The", "of", "in", "and", ",", "!", "(", ")", "'s", "...", "--", "river", "cat"]


def _phrase(rng: random.Random) -> str:
    words = [rng.choice(CONTENT_WORDS)] + [rng.choice(CONTENT_WORDS + FILLER) for _ in range(rng.randint(0, 5))]
    rng.shuffle(words)
    return rng.choice([" ", "  ", " ", "\t"]).join(words)


def _prediction(rng: random.Random, golds: list[str]) -> str:
    gold = rng.choice(golds)
    choice = rng.random()
    if choice < 0.25:
        return gold
    if choice < 0.4:
        return f"The {gold.upper()}!"
    if choice < 0.6:
        words = gold.split()
        kept = [w for w in words if rng.random() < 0.6] or [rng.choice(CONTENT_WORDS)]
        return " ".join(kept) + " " + rng.choice(CONTENT_WORDS)
    if choice < 0.8:
        return gold + " " + _phrase(rng)
    return _phrase(rng)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_v11_matches_torchmetrics_on_random_predictions(tmp_path, seed):
    torchmetrics_text = pytest.importorskip("torchmetrics.functional.text")
    rng = random.Random(seed)
    paragraphs, predictions, preds, targets = [], {}, [], []
    for p in range(40):
        qas = []
        for q in range(rng.randint(1, 8)):
            qid = f"p{p}q{q}"
            golds = [_phrase(rng) for _ in range(rng.randint(1, 3))]
            context = " | ".join(golds)
            qas.append((qid, golds, context))
            predictions[qid] = _prediction(rng, golds)
            preds.append({"prediction_text": predictions[qid], "id": qid})
            targets.append({"answers": {"answer_start": [0] * len(golds), "text": golds}, "id": qid})
        paragraphs += [(context, [make_qa(qid, "Which?", golds)]) for qid, golds, context in qas]
    data = write_json(tmp_path / "data.json", make_dataset(paragraphs))
    pred = write_json(tmp_path / "pred.json", predictions)
    result = run(V1, data, pred, 0)
    assert result.returncode == 0, result.stderr
    status, scores_line = result.stdout.splitlines()
    scores = json.loads(scores_line)
    expected = torchmetrics_text.squad(preds, targets)
    assert list(scores) == ["exact_match", "f1"]
    assert scores["exact_match"] == pytest.approx(float(expected["exact_match"]), abs=1e-4)
    assert scores["f1"] == pytest.approx(float(expected["f1"]), abs=1e-4)
    assert 5 < scores["exact_match"] < scores["f1"] < 95  # the random set is neither trivial nor hopeless
    assert status == PASSED and result.stderr == ""


V11_DATASET = [
    ("One, two, the. Denver Broncos. Carolina Panthers", [
        make_qa("q1", "Article?", ["the"]),
        make_qa("q2", "Who?", ["Denver Broncos"]),
        make_qa("q3", "Not answered?", ["two"]),
        make_qa("q4", "Which team?", ["Carolina Panthers", "Panthers"]),
    ]),
]  # fmt: skip
V11_PREDICTIONS = {"q1": "a", "q2": "Broncos", "q4": "Carolina Panthers!"}
# q1: "a" and "the" both normalize to "": EM 1, F1 0 (v1.1's rule).  q2: P 1, R 1/2 -> F1 2/3.
# q3: unanswered, 0.  q4: exact.  EM = 2/4, F1 = (0 + 2/3 + 0 + 1) / 4.
V11_EXPECTED = {"exact_match": 50.0, "f1": 100 * (2 / 3 + 1) / 4}


@pytest.mark.parametrize(("f1_acc", "status"), [(42.0, PASSED), (42.2, FAILED), (10, PASSED)])
def test_v11_hand_computed_and_status_line(tmp_path, f1_acc, status):
    data = write_json(tmp_path / "data.json", make_dataset(V11_DATASET, version="1.1"))
    pred = write_json(tmp_path / "pred.json", V11_PREDICTIONS)
    result = run(V1, data, pred, f1_acc)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == status and len(lines) == 2
    assert lines[1] == json.dumps({"exact_match": 50.0, "f1": V11_EXPECTED["f1"]})
    assert json.loads(lines[1])["f1"] == pytest.approx(41.6666667)
    assert result.stderr == "Unanswered question q3 will receive score 0.\n"


@pytest.mark.parametrize("f1_acc", ["nan", "inf", "-1", "100.5"])
def test_v11_reference_f1_outside_0_to_100_is_an_error(tmp_path, f1_acc):
    """NaN compares false with every F1, so it used to print PASSED."""
    data = write_json(tmp_path / "data.json", make_dataset(V11_DATASET, version="1.1"))
    pred = write_json(tmp_path / "pred.json", V11_PREDICTIONS)
    result = run(V1, data, pred, f1_acc)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"error: f1_acc is a reference F1 percentage from 0 to 100, got {float(f1_acc)}\n"


def test_v11_version_mismatch_is_reported(tmp_path):
    data = write_json(tmp_path / "data.json", make_dataset(V11_DATASET, version="2.0"))
    pred = write_json(tmp_path / "pred.json", V11_PREDICTIONS)
    result = run(V1, data, pred, 0)
    assert result.returncode == 0
    assert "Evaluation expects v-1.1, but got dataset with v-2.0\n" in result.stderr


# v2.0 case.  h3 has no prediction and is left out everywhere.
#          gold                 prediction       exact  f1    na_prob
#   h1     Denver Broncos|Broncos  "the Broncos"   1      1     0.1
#   h2     Santa Clara, California "Santa Clara"   0      0.8   0.6   (P 1, R 2/3)
#   n1     (none)               ""               1      1     0.9
#   n2     (none)               "Levi Stadium"   0      0     0.8
V2_DATASET = [
    ("Denver Broncos at Levi Stadium in Santa Clara, California, 1966.", [
        make_qa("h1", "Who won?", ["Denver Broncos", "Broncos"]),
        make_qa("h2", "Where?", ["Santa Clara, California"]),
        make_qa("h3", "When?", ["1966"]),
        make_qa("n1", "Who lost the toss?"),
        make_qa("n2", "Which stadium hosted 1950?"),
    ]),
]  # fmt: skip
V2_PREDICTIONS = {"h1": "the Broncos", "h2": "Santa Clara", "n1": "", "n2": "Levi Stadium"}
V2_NA_PROBS = {"h1": 0.1, "h2": 0.6, "n1": 0.9, "n2": 0.8}


def _v2_files(tmp_path):
    return (
        write_json(tmp_path / "data.json", make_dataset(V2_DATASET, version="2.0")),
        write_json(tmp_path / "pred.json", V2_PREDICTIONS),
        write_json(tmp_path / "na.json", V2_NA_PROBS),
    )


def _stdout_json(result):
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_v20_without_probabilities(tmp_path):
    data, pred, _ = _v2_files(tmp_path)
    result = run(V2, data, pred)
    assert result.returncode == 0
    assert result.stdout.startswith("Missing prediction for h3\n{\n  \"exact\": 50.0,")
    assert list(_stdout_json(result).items()) == [
        ("exact", 50.0), ("f1", 70.0), ("total", 4),
        ("HasAns_exact", 50.0), ("HasAns_f1", 90.0), ("HasAns_total", 2),
        ("NoAns_exact", 50.0), ("NoAns_f1", 50.0), ("NoAns_total", 2),
    ]  # fmt: skip


def test_v20_threshold_and_best_thresholds(tmp_path):
    data, pred, na = _v2_files(tmp_path)
    out = tmp_path / "eval.json"
    result = run(V2, data, pred, "-n", na, "-t", 0.5, "-o", out)
    assert result.returncode == 0 and result.stdout == "Missing prediction for h3\n"
    # Above 0.5, h2 turns into a wrong "no answer" (0) and n1, n2 into right ones (1).
    # Best thresholds start from 2 right (n1, n2 as no-answer) and answer in na_prob order:
    # exact: h1 +1 -> 3 at 0.1, h2 +0, n2 -1, n1 +0: 3/4.  f1: h1 -> 3 at 0.1, h2 +0.8 -> 3.8 at 0.6.
    assert list(json.loads(out.read_text()).items()) == [
        ("exact", 75.0), ("f1", 75.0), ("total", 4),
        ("HasAns_exact", 50.0), ("HasAns_f1", 50.0), ("HasAns_total", 2),
        ("NoAns_exact", 100.0), ("NoAns_f1", 100.0), ("NoAns_total", 2),
        ("best_exact", 75.0), ("best_exact_thresh", 0.1), ("best_f1", 95.0), ("best_f1_thresh", 0.6),
    ]  # fmt: skip


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_v20_non_standard_numbers_in_inputs_are_errors(tmp_path, number):
    """Python's json reads them (1e999 as inf) and wrote them back: best_f1_thresh came out as Infinity."""
    data, pred, na = _v2_files(tmp_path)
    Path(na).write_text(json.dumps(V2_NA_PROBS).replace("0.9", number), encoding="utf-8")
    out = tmp_path / "eval.json"
    result = run(V2, data, pred, "-n", na, "-o", out)
    assert result.returncode == 1 and not out.exists()
    assert result.stderr.startswith(f"error: {na}: not standard JSON: ") and len(result.stderr.splitlines()) == 1


def test_v20_nan_threshold_is_an_error(tmp_path):
    data, pred, na = _v2_files(tmp_path)
    result = run(V2, data, pred, "-n", na, "-t", "nan")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "error: --na-prob-thresh is NaN, which no probability exceeds\n"


def test_v20_report_is_standard_json_with_the_usual_file_mode(tmp_path):
    """It used to be created 0600 (a temporary file's mode) instead of what open() gives."""
    import os
    import stat

    data, pred, na = _v2_files(tmp_path)
    out = tmp_path / "eval.json"
    assert run(V2, data, pred, "-n", na, "-o", out).returncode == 0
    json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the report"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_v20_precision_recall_plots(tmp_path):
    pytest.importorskip("matplotlib")
    data, pred, na = _v2_files(tmp_path)
    images = tmp_path / "images"
    result = run(V2, data, pred, "--na-prob-file", na, "--out-image-dir", images)
    assert result.returncode == 0, result.stderr
    out = _stdout_json(result)
    # Ranked by na_prob h1, h2, n2, n1; 3 answerable questions (h3 counts).  AP = sum p * (r - r_prev):
    # exact: h1 p 1 r 1/3.  f1: h1 as exact, then h2 p 0.9 r 0.6.  oracle: h1 p 1 r 1/3, h2 p 1 r 2/3.
    assert out["pr_exact_ap"] == pytest.approx(100 / 3)
    assert out["pr_f1_ap"] == pytest.approx(100 * (1 / 3 + 0.9 * (0.6 - 1 / 3)))
    assert out["pr_oracle_ap"] == pytest.approx(200 / 3)
    assert list(out)[-3:] == ["pr_exact_ap", "pr_f1_ap", "pr_oracle_ap"]
    names = ["na_prob_hist_hasAns.png", "na_prob_hist_noAns.png", "pr_exact.png", "pr_f1.png", "pr_oracle.png"]
    assert sorted(p.name for p in images.iterdir()) == names
    assert all((images / name).read_bytes().startswith(b"\x89PNG") for name in names)


def test_v20_imports_matplotlib_only_for_plots(tmp_path):
    data, pred, _ = _v2_files(tmp_path)
    probe = (
        "import runpy, sys; sys.argv = [sys.argv[1], *sys.argv[2:]]; sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0])\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('matplotlib' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(V2), data, pred], capture_output=True, text=True)
    assert result.stdout.splitlines()[-1] == "False"


def test_v20_without_arguments_prints_help(tmp_path):
    result = run(V2)
    assert result.returncode == 1
    assert result.stdout.startswith("usage: Official evaluation script for SQuAD version 2.0. [-h]")


@pytest.mark.parametrize("script", [V1, V2])
@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("data_missing", "cannot read file"),
        ("data_malformed", "malformed JSON at line 1"),
        ("data_no_data", 'missing "data" in top level'),
        ("pred_not_object", "must be a JSON object keyed by question id"),
        ("pred_not_string", "prediction for question h1 has the wrong JSON type"),
        ("pred_not_utf8", "not UTF-8 text"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, script, broken, message):
    data, pred, _ = _v2_files(tmp_path)
    if broken == "data_missing":
        data = str(tmp_path / "absent.json")
    elif broken == "data_malformed":
        Path(data).write_text("{oops", encoding="utf-8")
    elif broken == "data_no_data":
        write_json(Path(data), {"version": "1.1"})
    elif broken == "pred_not_object":
        write_json(Path(pred), ["h1"])
    elif broken == "pred_not_string":
        write_json(Path(pred), {"h1": 3})
    else:
        Path(pred).write_bytes(b'{"h1": "\xff"}')
    args = (data, pred, 90) if script == V1 else (data, pred)
    result = run(script, *args)
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if not line.startswith("Evaluation expects")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert "&&&&" not in result.stdout and "{" not in result.stdout


def test_v20_unwritable_out_file(tmp_path):
    data, pred, _ = _v2_files(tmp_path)
    result = run(V2, data, pred, "-o", tmp_path / "no" / "such" / "dir" / "eval.json")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1 and "cannot write" in result.stderr


def test_f1_rules_differ_only_on_empty_normalizations():
    sys.path.insert(0, str(REPO / "squad"))
    try:
        import squad_metrics
    finally:
        sys.path.pop(0)
    assert squad_metrics.f1("the", "a", empty_matches_empty=False) == 0.0
    assert squad_metrics.f1("the", "a", empty_matches_empty=True) == 1.0
    assert squad_metrics.f1("the", "cat", empty_matches_empty=True) == 0.0
    assert squad_metrics.f1("cat cat dog", "the cat", empty_matches_empty=False) == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    assert squad_metrics.exact_match("The  Cat!", "cat") == 1
    assert squad_metrics.normalize_answer("An apple, the PEAR; a-b") == "apple pear ab"
