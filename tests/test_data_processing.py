"""helpers/data_processing.py: SQuAD reading, features and answers on hand-built inputs.

Answer tests place the logits by hand on the gold answer's word pieces and expect the gold text
back; feature tests check layouts worked out by hand and the max-context rule against its
definition (docs/SPEC.md "Features") evaluated by brute force.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from squad_fixtures import make_dataset, make_qa, minilm_vocab_file, write_json, write_squad_file

import helpers.data_processing as dp
import helpers.tokenization as tokenization

NUMBERS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"


@pytest.fixture(scope="module")
def tokenizer():
    return tokenization.FullTokenizer(minilm_vocab_file(), do_lower_case=True)


def test_convert_doc_tokens_splits_on_the_demo_separators_only():
    text = "  a  b\tc\r\nd\u202fe\u00a0f\u2003g "
    assert dp.convert_doc_tokens(text) == ["a", "b", "c", "d", "e\u00a0f\u2003g"]
    assert dp.convert_doc_tokens(" \t\n") == []


def test_read_squad_json_v1_and_v2(tmp_path):
    paragraphs = [
        ("Paris is  the capital.", [make_qa("q1", "What is the capital?", ["Paris"]), make_qa("q2", "Is it?", ["capital"])]),
        ("Nothing\there.", [make_qa("q3", "Unanswerable?")]),
    ]
    for version in ("1.1", "2.0"):
        examples = dp.read_squad_json(write_squad_file(tmp_path / f"v{version}.json", paragraphs, version))
        assert [(e.id, e.question_text) for e in examples] == [
            ("q1", "What is the capital?"),
            ("q2", "Is it?"),
            ("q3", "Unanswerable?"),
        ]
        assert examples[0].doc_tokens == ["Paris", "is", "the", "capital."]
        assert examples[0].doc_tokens is examples[1].doc_tokens
        assert examples[2].doc_tokens == ["Nothing", "here."]


def test_features_layout_by_hand(tokenizer):
    doc_tokens = NUMBERS.split()
    features = dp.convert_example_to_features(doc_tokens, "What jumps?", tokenizer, 16, 4, 64)
    # 16 - 3 question pieces - 3 = 10 passage pieces a window; windows start at 0 and 4.
    assert len(features) == 2
    question = ["[CLS]", "what", "jumps", "?", "[SEP]"]
    assert features[0].tokens == question + doc_tokens[0:10] + ["[SEP]"]
    assert features[1].tokens == question + doc_tokens[4:14] + ["[SEP]"]
    for feature, first_word in zip(features, (0, 4)):
        assert feature.input_ids.dtype == np.int32 and feature.input_ids.shape == (16,)
        assert feature.input_ids.tolist() == tokenizer.convert_tokens_to_ids(feature.tokens)
        assert feature.input_mask.tolist() == [1] * 16
        assert feature.segment_ids.tolist() == [0] * 5 + [1] * 11
        assert feature.token_to_orig_map == {5 + i: first_word + i for i in range(10)}
    # Word 6 is 3 words from window 0's end but 2 from window 1's start; word 7 the other way.
    assert features[0].token_is_max_context == {5 + i: i <= 6 for i in range(10)}
    assert features[1].token_is_max_context == {5 + i: 4 + i >= 7 for i in range(10)}


def test_features_padding_and_subword_map(tokenizer):
    features = dp.convert_example_to_features(["Unaffable,", "dog"], "who", tokenizer, 20, 128)
    (feature,) = features
    pieces = tokenizer.tokenize("Unaffable,")
    assert feature.tokens == ["[CLS]", "who", "[SEP]", *pieces, "dog", "[SEP]"]
    real = len(feature.tokens)
    assert feature.input_mask.tolist() == [1] * real + [0] * (20 - real)
    assert feature.input_ids[real:].tolist() == [0] * (20 - real)
    assert feature.segment_ids.tolist() == [0] * 3 + [1] * (real - 3) + [0] * (20 - real)
    assert feature.token_to_orig_map == {**{3 + i: 0 for i in range(len(pieces))}, 3 + len(pieces): 1}
    assert all(feature.token_is_max_context.values())


def _brute_force_max_context(spans, span_index, position):
    best_score, best_span = None, None
    for index, (start, length) in enumerate(spans):
        end = start + length - 1
        if start <= position <= end:
            score = min(position - start, end - position) + 0.01 * length
            if best_score is None or score > best_score:
                best_score, best_span = score, index
    return best_span == span_index


def test_max_context_and_windows_match_the_definition(tokenizer):
    rng = random.Random(7)
    words = (NUMBERS + " fifteen sixteen").split()
    for _ in range(60):
        doc_tokens = [rng.choice(words) for _ in range(rng.randint(1, 80))]
        max_seq_length, stride = rng.randint(6, 40), rng.randint(1, 20)
        features = dp.convert_example_to_features(doc_tokens, "why", tokenizer, max_seq_length, stride)
        window = max_seq_length - 4
        spans = []
        for index, feature in enumerate(features):
            positions = sorted(feature.token_to_orig_map)
            start = 0 if index == 0 else spans[-1][0] + min(spans[-1][1], stride)
            spans.append((start, len(positions)))
            assert positions == list(range(3, 3 + len(positions)))
            assert len(positions) == min(window, len(doc_tokens) - start)
            assert [feature.token_to_orig_map[p] for p in positions] == list(range(start, start + len(positions)))
        assert spans[-1][0] + spans[-1][1] == len(doc_tokens)
        for index, feature in enumerate(features):
            for position, is_max in feature.token_is_max_context.items():
                assert is_max == _brute_force_max_context(spans, index, spans[index][0] + position - 3)


def test_long_question_is_truncated_to_max_query_length(tokenizer):
    question = " ".join(["seven"] * 70)
    (feature,) = dp.convert_example_to_features(["dog"], question, tokenizer, 96, 128, max_query_length=64)
    assert feature.tokens == ["[CLS]"] + ["seven"] * 64 + ["[SEP]", "dog", "[SEP]"]
    assert feature.segment_ids[:66].tolist() == [0] * 66 and feature.segment_ids[66:68].tolist() == [1, 1]


@pytest.mark.parametrize(
    ("doc_tokens", "question", "sizes", "message"),
    [
        (["dog"], "   ", (16, 8, 64), "question has no tokens"),
        (["dog"], "\u200b\x00", (16, 8, 64), "question has no tokens"),
        ([], "who", (16, 8, 64), "passage has no tokens"),
        (["\u200b"], "who", (16, 8, 64), "passage has no tokens"),
        (["dog"], "one two three", (6, 8, 64), "max_seq_length 6 cannot hold a 3-token question"),
        (["dog"], "one two three", (7, 8, 2), None),  # truncated to 2 pieces, so 7 is enough
        (["dog"], "who", (16, 0, 64), "doc_stride must be a positive integer"),
        (["dog"], "who", (16, 8, 0), "max_query_length must be a positive integer"),
    ],
)
def test_feature_errors(tokenizer, doc_tokens, question, sizes, message):
    if message is None:
        assert len(dp.convert_example_to_features(doc_tokens, question, tokenizer, *sizes)) == 1
        return
    with pytest.raises(dp.FeatureError, match=message) as err:
        dp.convert_example_to_features(doc_tokens, question, tokenizer, *sizes)
    assert "\n" not in str(err.value)


def _gold_results(features, answer_pieces, background=0.0, gold=10.0):
    """Logits with ``gold`` on the first occurrence of the answer's pieces in each window's passage."""
    results = []
    for index, feature in enumerate(features):
        start_logits = np.full(len(feature.input_ids), background, dtype=np.float32)
        end_logits = start_logits.copy()
        passage = sorted(feature.token_to_orig_map)
        for position in passage:
            if feature.tokens[position : position + len(answer_pieces)] == answer_pieces:
                if position + len(answer_pieces) - 1 <= passage[-1]:
                    start_logits[position] = gold
                    end_logits[position + len(answer_pieces) - 1] = gold
                    break
        results.append(dp.NetworkOutput(start_logits, end_logits, index))
    return results


ACCENTED_CONTEXT = (
    "  Le   Café Müller's\tterrace opened in 1923.\n\nIts owner, José Ñúñez, served crème brûlée\r\n"
    "to queues 10\u00a0km long. "
)
ACCENTED_QAS = [
    ("Which café?", "Café Müller"),
    ("Who was the owner?", "José Ñúñez"),
    ("What dessert?", "crème brûlée"),
    ("How long were the queues?", "10\u00a0km"),
    ("When did it open?", "1923"),
    ("What opened?", "terrace"),
]


def _long_context():
    rng = random.Random(3)
    filler = "the crew trained for many months before launch and then".split()
    facts = ["Neil Armstrong", "the Sea of Tranquility", "July 20, 1969", "Michael Collins", "Saturn V rocket"]
    words = []
    for fact in facts:
        words += [rng.choice(filler) for _ in range(rng.randint(17, 41))] + fact.split()
    return " ".join(words + filler), facts


@pytest.mark.parametrize("max_seq_length,doc_stride", [(384, 128), (40, 8), (32, 5)])
def test_gold_logits_give_gold_answers(tmp_path, tokenizer, max_seq_length, doc_stride):
    long_context, facts = _long_context()
    paragraphs = [
        (ACCENTED_CONTEXT, [make_qa(f"a{i}", q, [a]) for i, (q, a) in enumerate(ACCENTED_QAS)]),
        (long_context, [make_qa(f"l{i}", f"What about fact {i}?", [fact]) for i, fact in enumerate(facts)]),
    ]
    dataset = make_dataset(paragraphs)
    examples = dp.read_squad_json(write_json(tmp_path / "gold.json", dataset))
    gold = {qa["id"]: qa["answers"][0]["text"] for p in dataset["data"][0]["paragraphs"] for qa in p["qas"]}
    window_counts = []
    for example in examples:
        features = dp.convert_example_to_features(
            example.doc_tokens, example.question_text, tokenizer, max_seq_length, doc_stride
        )
        window_counts.append(len(features))
        results = _gold_results(features, tokenizer.tokenize(gold[example.id]))
        prediction, nbest, diff = dp.get_predictions(example.doc_tokens, features, results, 20, 30)
        assert prediction == gold[example.id], example.id
        assert nbest[0]["text"] == prediction and nbest[0]["probability"] > 0.99 and diff == 0.0
    if max_seq_length < 100:
        assert max(window_counts) >= 8


@pytest.mark.parametrize(
    ("window", "start", "end", "n_best_size", "max_answer_length"),
    [
        (0, 5 + 8, 5 + 9, 1, 30),  # word 8 is max context only in window 1
        (0, 1, 2, 1, 30),  # inside the question
        (0, 0, 0, 1, 30),  # [CLS]
        (1, 5 + 9, 5 + 1, 2, 30),  # ends before it starts
        (1, 5 + 0, 5 + 6, 2, 3),  # longer than max_answer_length
    ],
)
def test_invalid_spans_are_ignored(tokenizer, window, start, end, n_best_size, max_answer_length):
    """A huge score on an invalid span must lose to the gold span ("twelve", only in window 1)."""
    doc_tokens = NUMBERS.split()
    features = dp.convert_example_to_features(doc_tokens, "What jumps?", tokenizer, 16, 4)
    results = _gold_results(features, ["twelve"])
    results[window].start_logits[start] = results[window].end_logits[end] = 100.0
    prediction, nbest, _ = dp.get_predictions(doc_tokens, features, results, n_best_size, max_answer_length)
    assert prediction == "twelve"
    assert all(entry["start_logit"] + entry["end_logit"] < 100.0 for entry in nbest)


def test_duplicate_texts_are_listed_once(tokenizer):
    doc_tokens = NUMBERS.split() + ["eight"]
    features = dp.convert_example_to_features(doc_tokens, "What jumps?", tokenizer, 16, 4)
    # Windows 0 and 1 score word 7 ("eight"), window 2 (words 8-14) scores word 14, also "eight".
    results = _gold_results(features, ["eight"])
    assert len(features) == 3 and features[2].tokens[5 + 6] == "eight" and results[2].start_logits[5 + 6] == 10.0
    _, nbest, _ = dp.get_predictions(doc_tokens, features, results, 20, 30)
    texts = [entry["text"] for entry in nbest]
    assert texts[0] == "eight" and texts.count("eight") == 1 and len(set(texts)) == len(texts)


def _single_feature(tokenizer):
    doc_tokens = NUMBERS.split()[:6]
    (feature,) = dp.convert_example_to_features(doc_tokens, "what", tokenizer, 16, 128)
    return doc_tokens, [feature]


def test_nbest_order_and_probabilities_by_hand(tokenizer):
    doc_tokens, features = _single_feature(tokenizer)
    start, end = np.zeros(16, np.float32), np.zeros(16, np.float32)
    a, b = 3 + 1, 3 + 3  # "two" and "four"
    start[a], start[b], end[a], end[b] = 2.0, 1.0, 1.0, 0.5
    results = [dp.NetworkOutput(start, end, 0)]
    prediction, nbest, _ = dp.get_predictions(doc_tokens, features, results, 2, 30)
    assert prediction == "two"
    assert [entry["text"] for entry in nbest] == ["two", "two three four"]
    assert nbest[0]["probability"] == pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-12)
    assert list(nbest[0]) == ["text", "probability", "start_logit", "end_logit"]
    assert (nbest[1]["start_logit"], nbest[1]["end_logit"]) == (2.0, 0.5)
    json.dumps(nbest)
    _, short, _ = dp.get_predictions(doc_tokens, features, results, 2, 1)
    assert [entry["text"] for entry in short] == ["two", "four"]
    assert [entry["probability"] for entry in short] == pytest.approx(
        [1 / (1 + math.exp(-1.5)), 1 / (1 + math.exp(1.5))], abs=1e-12
    )


def test_candidates_rank_by_start_plus_end(tokenizer):
    doc_tokens, features = _single_feature(tokenizer)
    start, end = np.zeros(16, np.float32), np.zeros(16, np.float32)
    start[3 + 0], end[3 + 1] = 2.0, 0.1
    start[3 + 4], end[3 + 4] = 1.5, 3.0
    # "one ... five" 5.0, "five" 4.5, "one two" 2.1: the third loses its place to the second.
    _, nbest, _ = dp.get_predictions(doc_tokens, features, [dp.NetworkOutput(start, end, 0)], 2, 30)
    assert [entry["text"] for entry in nbest] == ["one two three four five", "five"]


def test_tied_logits_prefer_the_earliest_position(tokenizer):
    doc_tokens = (NUMBERS.split() * 20)[:300]
    (feature,) = dp.convert_example_to_features(doc_tokens, "what", tokenizer, 384, 128)
    logits = np.zeros(384, np.float32)
    logits[3 : 3 + 300] = 1.0  # every passage position ties
    prediction, nbest, _ = dp.get_predictions(doc_tokens, [feature], [dp.NetworkOutput(logits, logits, 0)], 1, 30)
    assert prediction == "one" and len(nbest) == 1


def test_no_valid_span_gives_empty_placeholder(tokenizer):
    doc_tokens, features = _single_feature(tokenizer)
    start, end = np.full(16, -5.0), np.full(16, -5.0)
    start[1] = end[1] = 9.0  # only the question token scores
    prediction, nbest, _ = dp.get_predictions(doc_tokens, features, [dp.NetworkOutput(start, end, 0)], 1, 30)
    assert prediction == "empty"
    assert nbest == [{"text": "empty", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0}]


@pytest.mark.parametrize(("n_best_size", "max_answer_length", "name"), [(0, 30, "n_best_size"), (20, -1, "max_answer_length")])
def test_answer_sizes_below_one_are_errors(tokenizer, n_best_size, max_answer_length, name):
    """With no candidate kept or none short enough, the placeholder would win with probability 1."""
    doc_tokens, features = _single_feature(tokenizer)
    start, end = np.zeros(16), np.zeros(16)
    with pytest.raises(dp.FeatureError, match=f"{name} must be a positive integer"):
        dp.get_predictions(doc_tokens, features, [dp.NetworkOutput(start, end, 0)], n_best_size, max_answer_length)


def test_null_answer_only_behind_the_v2_option(tokenizer):
    doc_tokens, features = _single_feature(tokenizer)
    start, end = np.zeros(16, np.float32), np.zeros(16, np.float32)
    start[0], end[0] = 5.0, 4.0  # [CLS]: null score 9
    start[4], end[5] = 2.0, 1.0  # "two three": score 3
    results = [dp.NetworkOutput(start, end, 0)]
    assert dp.get_predictions(doc_tokens, features, results, 20, 30)[::2] == ("two three", 0.0)
    prediction, nbest, diff = dp.get_predictions(doc_tokens, features, results, 20, 30, version_2_with_negative=True)
    assert (prediction, diff) == ("", 6.0)
    assert nbest[0]["text"] == "" and nbest[1]["text"] == "two three"
    kept = dp.get_predictions(
        doc_tokens, features, results, 20, 30, version_2_with_negative=True, null_score_diff_threshold=6.5
    )
    assert kept[0] == "two three"


@pytest.mark.parametrize(
    ("pred", "orig", "expected"),
    [
        ("steve smith", "Steve Smith's", "Steve Smith"),
        ("cafe muller", "Café Müller's", "Café Müller"),
        ("nowhere", "Steve Smith's", "Steve Smith's"),
        ("cafe", "Cafe\u0301 bar", "Cafe\u0301 bar"),  # a decomposed accent breaks the alignment
    ],
)
def test_get_final_text(pred, orig, expected):
    assert dp.get_final_text(pred, orig) == expected


def _dataset_without(path_keys):
    dataset = make_dataset([("Some passage.", [make_qa("q1", "What?", ["Some"])])])
    target = dataset
    for key in path_keys[:-1]:
        target = target[key]
    del target[path_keys[-1]]
    return dataset


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "malformed JSON at line 1"),
        (b'{"data": [\xff]}', "not UTF-8 text"),
        (b"[]", "top level is not a JSON object"),
        (json.dumps(_dataset_without(["data"])).encode(), 'missing "data" in top level'),
        (json.dumps(_dataset_without(["data", 0, "paragraphs"])).encode(), 'missing "paragraphs" in data[0]'),
        (
            json.dumps(_dataset_without(["data", 0, "paragraphs", 0, "qas"])).encode(),
            'missing "qas" in data[0].paragraphs[0]',
        ),
        (
            json.dumps(_dataset_without(["data", 0, "paragraphs", 0, "context"])).encode(),
            'missing "context" in data[0].paragraphs[0]',
        ),
        (
            json.dumps(_dataset_without(["data", 0, "paragraphs", 0, "qas", 0, "question"])).encode(),
            'missing "question" in data[0].paragraphs[0].qas[0]',
        ),
        (json.dumps({"data": {"x": 1}}).encode(), "data must be a JSON list"),
        (
            json.dumps(make_dataset([(" \u00a0\n ", [make_qa("q1", "What?")])])).encode(),
            "data[0].paragraphs[0].context is empty",
        ),
        (
            json.dumps(make_dataset([("Text.", [make_qa("q9", " \t")])])).encode(),
            "data[0].paragraphs[0].qas[0].question is empty (id q9)",
        ),
        (
            # Predictions are keyed by id: the second question would overwrite the first's answer.
            json.dumps(make_dataset([("A.", [make_qa("q1", "Who?")]), ("B.", [make_qa("q2", "Why?"), make_qa("q1", "How?")])])).encode(),
            "data[0].paragraphs[1].qas[1].id 'q1' is also the id of data[0].paragraphs[0].qas[0]",
        ),
        (json.dumps(make_dataset([("Text.", [])])).encode(), "holds no questions"),
        (json.dumps({"version": "1.1", "data": []}).encode(), "holds no questions"),
    ],
)
def test_bad_squad_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(dp.SquadFormatError) as err:
        dp.read_squad_json(str(path))
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_squad_file(tmp_path):
    with pytest.raises(dp.SquadFormatError, match="cannot read file"):
        dp.read_squad_json(str(tmp_path / "absent.json"))


def test_featurize_benchmark_runs_on_a_small_set():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "featurize_speed.py"
    args = ["--passages", "4", "--questions", "20", "-s", "64", "--doc-stride", "16", "-v", minilm_vocab_file()]
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary, rate = result.stdout.splitlines()
    assert summary.startswith("20 questions over 4 passages") and rate.endswith(" examples/s")
    assert int(summary.split(": ")[1].split()[0]) > 20  # 120-250 words need several 64-token windows
