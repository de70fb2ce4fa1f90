"""inference.py: printed formats (docs/SPEC.md "Printed output"), answers against a HuggingFace oracle, SQuAD
scoring, bad input."""

from __future__ import annotations

import collections
import fcntl
import io
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import builder
import helpers.data_processing as dp
import helpers.question_answering as qa
import helpers.tokenization as tokenization
import inference
import inference_c
import inference_varseqlen
from engines import PASSAGE, QUESTION, REPO_ROOT, SEQ_LEN, oracle_answer, run_main, tiny_model_dir
from helpers.portable import ENGINE_MAGIC, FORMAT_VERSION
from helpers.question_answering import escape_controls

FRAME = "-" * 24


def run(argv, capsys, stdin: str | None = None, monkeypatch=None):
    """(exit status, stdout, stderr) of inference.main in this process."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return run_main(inference.main, [*argv, "--device", "cpu"], capsys)


def test_single_question_output_line_by_line(engine, vocab, capsys, tmp_path_factory):
    status, out, err = run(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-p", *PASSAGE.split(" "), "-q", *QUESTION.split(" ")], capsys)
    assert status == 0, err
    patterns = [
        "",
        "Passage: " + re.escape(PASSAGE),
        "",
        "Question: " + re.escape(QUESTION),
        FRAME,
        r"Running inference in (\d+\.\d{3}) Sentences/Sec",
        FRAME,
        r"Answer: '(.*)'",
        r"With probability: (\d+\.\d{3})",
        r"Network time: (\d+\.\d{3}) ms per feature",
        r"End-to-end time: \d+\.\d{3} ms",
    ]
    lines = out.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(patterns), out
    matches = [re.fullmatch(p, line) for p, line in zip(patterns, lines)]
    assert all(matches), [(p, line) for p, line, m in zip(patterns, lines, matches) if not m]

    sentences_per_sec = float(matches[5].group(1))
    network_ms = float(matches[9].group(1))
    assert sentences_per_sec == pytest.approx(1000.0 / network_ms, rel=0.01, abs=0.01)

    expected_text, expected_probability = oracle_answer(tiny_model_dir(tmp_path_factory), dp.convert_doc_tokens(PASSAGE), QUESTION)
    assert matches[7].group(1) == expected_text
    assert float(matches[8].group(1)) == pytest.approx(expected_probability * 100, abs=0.01)


def test_passage_and_question_files(engine, vocab, capsys, tmp_path):
    passage_file = tmp_path / "passage.txt"
    passage_file.write_text(PASSAGE + "\n", encoding="utf-8")
    question_file = tmp_path / "question.txt"
    question_file.write_text(QUESTION, encoding="utf-8")
    status, out, _ = run(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-pf", str(passage_file), "-qf", str(question_file)], capsys)
    assert status == 0
    assert f"\nPassage: {PASSAGE}\n\n" in out and f"\nQuestion: {QUESTION}\n" in out


def test_interactive_loop_ends_on_empty_line(engine, vocab, capsys, monkeypatch):
    stdin = f"{PASSAGE}\n{QUESTION}\nWho is open-sourcing parsers?\n\n"
    status, out, _ = run(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN)], capsys, stdin, monkeypatch)
    assert status == 0
    assert out.startswith("Paragraph: Question (to exit, type one of ['exit', 'quit']): ")
    assert out.count("Running inference in") == 2 and out.count(FRAME) == 4
    assert "Passage:" not in out  # no echo in interactive mode


@pytest.mark.parametrize("stdin", ["", "some passage\n", "some passage\nexit\n"])
def test_interactive_ctrl_d_and_exit_end_cleanly(engine, vocab, capsys, monkeypatch, stdin):
    status, out, err = run(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN)], capsys, stdin, monkeypatch)
    assert status == 0 and err == ""
    assert "Running inference" not in out


def squad_file(path, gold_answers: dict[str, str]):
    data = {
        "version": "1.1",
        "data": [
            {
                "title": "TensorRT",
                "paragraphs": [
                    {"context": PASSAGE, "qas": [
                        {"id": "q1", "question": QUESTION, "answers": [{"text": gold_answers["q1"], "answer_start": 0}]},
                        {"id": "q2", "question": "What does it include?", "answers": [{"text": gold_answers["q2"], "answer_start": 0}]},
                    ]},
                    {"context": "The engine runs on a GPU or on the CPU of this machine.", "qas": [
                        {"id": "q3", "question": "Where does the engine run?", "answers": [{"text": gold_answers["q3"], "answer_start": 0}]},
                    ]},
                ],
            }
        ],
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_squad_predictions_and_evaluation(engine, vocab, capsys, tmp_path, tmp_path_factory):
    model = tiny_model_dir(tmp_path_factory)
    questions = {
        "q1": (PASSAGE, QUESTION),
        "q2": (PASSAGE, "What does it include?"),
        "q3": ("The engine runs on a GPU or on the CPU of this machine.", "Where does the engine run?"),
    }
    expected = collections.OrderedDict(
        (qid, oracle_answer(model, dp.convert_doc_tokens(passage), question)[0]) for qid, (passage, question) in questions.items()
    )
    assert all(re.search(r"\w", text) for text in expected.values())  # precondition for the F1 arithmetic below
    # Two gold answers equal the oracle's, the third shares no word with anything: EM = F1 = 200/3.
    gold = squad_file(tmp_path / "dev.json", {"q1": expected["q1"], "q2": expected["q2"], "q3": "zqxj"})
    predictions = tmp_path / "predictions.json"
    capsys.readouterr()  # the oracle's model loading

    status, out, err = run(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-sq", str(gold), "-o", str(predictions)], capsys)
    assert status == 0, err
    assert err == ""  # the progress bar only appears when stderr is a terminal
    assert out == f"\nOutput dump to {predictions}\n"
    assert predictions.read_text(encoding="utf-8") == json.dumps(expected, indent=4)
    assert [p.name for p in tmp_path.iterdir()].count("predictions.json") == 1 and len(list(tmp_path.iterdir())) == 2

    evaluator = REPO_ROOT / "squad" / "evaluate-v1.1.py"
    for reference, verdict in (("66", "PASSED"), ("90", "FAILED")):
        result = subprocess.run([sys.executable, str(evaluator), str(gold), str(predictions), reference], capture_output=True, text=True)
        lines = result.stdout.splitlines()
        assert lines[0] == f"&&&& {verdict} TensorRT BERT Squad Accuracy matches reference."
        scores = json.loads(lines[1])
        assert list(scores) == ["exact_match", "f1"]
        assert scores["exact_match"] == pytest.approx(200 / 3) and scores["f1"] == pytest.approx(200 / 3)


# ---- bad input -----------------------------------------------------------------------------


def assert_one_line_error(status, err, *fragments):
    assert status == 1
    assert err.startswith("inference.py: error: ")
    assert err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_missing_engine_and_vocab(engine, vocab, capsys, tmp_path):
    status, _, err = run(["-e", str(tmp_path / "none.engine"), "-v", str(vocab), "-p", "x", "-q", "y"], capsys)
    assert_one_line_error(status, err, "engine file not found")
    status, _, err = run(["-e", str(engine), "-v", str(tmp_path / "vocab.txt"), "-p", "x", "-q", "y"], capsys)
    assert_one_line_error(status, err, "vocabulary file not found")
    status, _, err = run(["-e", str(engine), "-p", "x", "-q", "y"], capsys)
    assert_one_line_error(status, err, "-v/--vocab-file")


def test_passage_file_not_utf8(engine, vocab, capsys, tmp_path):
    passage = tmp_path / "latin1.txt"
    passage.write_bytes("Caf\xe9 au lait".encode("latin-1"))
    status, _, err = run(["-e", str(engine), "-v", str(vocab), "-pf", str(passage), "-q", "What?"], capsys)
    assert_one_line_error(status, err, "not UTF-8")


def test_squad_mode_on_non_squad_json_writes_nothing(engine, vocab, capsys, tmp_path):
    not_squad = tmp_path / "config.json"
    not_squad.write_text(json.dumps({"hidden_size": 32}), encoding="utf-8")
    predictions = tmp_path / "predictions.json"
    status, _, err = run(["-e", str(engine), "-v", str(vocab), "-sq", str(not_squad), "-o", str(predictions)], capsys)
    assert_one_line_error(status, err, "SQuAD")
    assert not predictions.exists()


def test_unwritable_output_is_refused_before_running(engine, vocab, capsys, tmp_path):
    gold = squad_file(tmp_path / "dev.json", {"q1": "a", "q2": "b", "q3": "c"})
    status, _, err = run(["-e", str(engine), "-v", str(vocab), "-sq", str(gold), "-o", str(tmp_path / "missing" / "p.json")], capsys)
    assert_one_line_error(status, err, "does not exist")
    status, _, err = run(["-e", str(engine), "-v", str(vocab), "-sq", str(gold), "-o", str(tmp_path)], capsys)
    assert_one_line_error(status, err, "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.json"]


def test_batch_outside_every_profile(engine, vocab, capsys):
    status, _, err = run(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-b", "2", "-p", "x", "-q", "y"], capsys)
    assert_one_line_error(status, err, "Could not find any profile that can run batch size 2.")
    status, _, err = run(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN * 2), "-p", "x", "-q", "y"], capsys)
    assert_one_line_error(status, err, "Could not find any profile that can run batch size 1.")


def test_command_line_error_is_one_line_with_status_1(tmp_path):
    plan = tmp_path / "bert_large_128.engine"
    plan.write_bytes(b"ftrt" + bytes(256))
    result = subprocess.run(
        [sys.executable, "inference.py", "-e", str(plan), "-v", "vocab.txt", "-p", "x", "-q", "y"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("inference.py: error: ")


def test_engine_of_another_format_version(engine, vocab, capsys, tmp_path):
    data = bytearray(engine.read_bytes())
    offset = len(ENGINE_MAGIC)
    assert int.from_bytes(data[offset : offset + 4], "little") == FORMAT_VERSION
    data[offset : offset + 4] = (FORMAT_VERSION + 1).to_bytes(4, "little")
    newer = tmp_path / "newer.engine"
    newer.write_bytes(bytes(data))
    status, _, err = run(["-e", str(newer), "-v", str(vocab), "-p", "x", "-q", "y"], capsys)
    assert_one_line_error(status, err, f"format version {FORMAT_VERSION + 1} is not supported")


def test_progress_bar_on_a_terminal(engine, vocab, tmp_path):
    gold = squad_file(tmp_path / "dev.json", {"q1": "a", "q2": "b", "q3": "c"})
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide; give it a real terminal's size.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    result = subprocess.run(
        [sys.executable, "inference.py", "-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "--device", "cpu",
         "-sq", str(gold), "-o", str(tmp_path / "predictions.json")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=follower, text=True,
    )
    os.close(follower)
    terminal = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(leader)
    assert result.returncode == 0
    assert "3/3" in terminal.decode() and "SQuAD" in terminal.decode()
    assert "SQuAD" not in result.stdout


# ---- questions that cannot be answered, and values that would be accepted silently --------------


UNANSWERABLE_SQUAD = {
    "version": "1.1",
    "data": [{"title": "t", "paragraphs": [
        {"context": PASSAGE, "qas": [
            {"id": "q1", "question": QUESTION, "answers": []},
            # Control characters only: no word pieces.
            {"id": "q2", "question": "\u0001\u0002", "answers": []},
            {"id": "q3", "question": "What does it include?", "answers": []},
        ]},
        # Combining accents only: the tokenizer strips them all.
        {"context": "\u0301\u0302", "qas": [{"id": "q4", "question": "What is it?", "answers": []}]},
    ]}],
}


@pytest.mark.parametrize("script", ["inference", "inference_c"])
def test_squad_run_goes_on_past_questions_without_tokens(engine, vocab, capsys, tmp_path, tmp_path_factory, script):
    main = {"inference": inference.main, "inference_c": inference_c.main}[script]
    gold = tmp_path / "dev.json"
    gold.write_text(json.dumps(UNANSWERABLE_SQUAD), encoding="utf-8")
    model = tiny_model_dir(tmp_path_factory)
    expected = {
        "q1": oracle_answer(model, dp.convert_doc_tokens(PASSAGE), QUESTION)[0],
        "q2": "",
        "q3": oracle_answer(model, dp.convert_doc_tokens(PASSAGE), "What does it include?")[0],
        "q4": "",
    }
    capsys.readouterr()
    predictions = tmp_path / "predictions.json"
    status, out, err = run_main(
        main, ["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-sq", str(gold), "-o", str(predictions), "--device", "cpu"], capsys
    )
    assert status == 0, err
    assert json.loads(predictions.read_text(encoding="utf-8")) == expected
    assert list(json.loads(predictions.read_text(encoding="utf-8"))) == ["q1", "q2", "q3", "q4"]
    assert err.splitlines() == [
        "warning: question 'q2' answered with an empty string: question has no tokens: '\\x01\\x02'",
        "warning: question 'q4' answered with an empty string: passage has no tokens",
    ]
    assert f"Output dump to {predictions}" in out


def test_interactive_mode_explains_a_question_without_tokens_and_asks_again(engine, vocab, capsys, monkeypatch):
    stdin = f"{PASSAGE}\n\u0001\n{QUESTION}\nexit\n"
    status, out, err = run(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN)], capsys, stdin, monkeypatch)
    assert status == 0, err
    assert err == "Cannot answer this question: question has no tokens: '\\x01'. Try another one.\n"
    assert out.count("Question (to exit, type one of ['exit', 'quit']): ") == 3
    assert out.count("Running inference in") == 1


@pytest.mark.parametrize(
    ("option", "value", "name"),
    [
        ("--n-best-size", "0", "--n-best-size"),
        ("--max-answer-length", "-1", "--max-answer-length"),
        ("--max-query-length", "0", "--max-query-length"),
        ("-s", "0", "-s/--sequence-length"),
        ("--doc-stride", "0", "--doc-stride"),
    ],
)
@pytest.mark.parametrize("script", ["inference", "inference_varseqlen", "inference_c"])
def test_sizes_below_one_are_refused_before_loading(capsys, tmp_path, option, value, name, script):
    """Before, --n-best-size 0 answered 'empty' with probability 100 and exit status 0."""

    if script == "inference_c" and option == "--doc-stride":
        pytest.skip("inference_c.py has no --doc-stride (a fixed 128, like the original)")
    main = {"inference": inference.main, "inference_varseqlen": inference_varseqlen.main, "inference_c": inference_c.main}[script]
    # Neither file exists: the check comes before anything is read.
    argv = ["-e", str(tmp_path / "none.engine"), "-v", str(tmp_path / "none.txt"), "-p", "x", "-q", "y", option, value]
    status, out, err = run_main(main, argv, capsys)
    assert status == 1 and out == ""
    assert err == f"{script}.py: error: {name} must be a positive integer, got {value}\n"


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": PASSAGE, "qas": []}]}]}, "holds no questions"),
        (
            {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": PASSAGE, "qas": [
                {"id": "a", "question": QUESTION, "answers": []}, {"id": "a", "question": "Why?", "answers": []}]}]}]},
            "data[0].paragraphs[0].qas[1].id 'a' is also the id of data[0].paragraphs[0].qas[0]",
        ),
    ],
)
def test_squad_file_without_questions_or_with_a_repeated_id_writes_nothing(engine, vocab, capsys, tmp_path, dataset, message):
    gold = tmp_path / "dev.json"
    gold.write_text(json.dumps(dataset), encoding="utf-8")
    predictions = tmp_path / "predictions.json"
    status, _, err = run(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-sq", str(gold), "-o", str(predictions)], capsys)
    assert_one_line_error(status, err, "not a usable SQuAD file", message)
    assert not predictions.exists()


def test_shape_outside_every_profile_names_the_dimension(engine, vocab, capsys):
    status, _, err = run(["-e", str(engine), "-v", str(vocab), "-s", "513", "-p", "x", "-q", "y"], capsys)
    assert_one_line_error(
        status, err,
        "Could not find any profile that can run batch size 1. Sequence length 513 is outside every profile of the engine, "
        f"which takes batch size 1 with sequence length {SEQ_LEN}.",
    )
    status, _, err = run(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-b", "3", "-p", "x", "-q", "y"], capsys)
    assert_one_line_error(status, err, "Batch size 3 is outside every profile")


def test_checkpoint_folder_as_vocabulary(engine, vocab, capsys, tmp_path):
    """-v FOLDER reads a WordPiece model's vocab.txt inside it; a folder without one is named as such."""
    argv = ["-e", str(engine), "-s", str(SEQ_LEN), "-p", *PASSAGE.split(" "), "-q", *QUESTION.split(" ")]
    status, from_file, _ = run([*argv, "-v", str(vocab)], capsys)
    assert status == 0
    status, from_folder, _ = run([*argv, "-v", str(vocab.parent)], capsys)
    assert status == 0
    answer = re.compile(r"Answer: .*\nWith probability: .*\n")
    assert answer.findall(from_folder) == answer.findall(from_file) != []
    status, _, err = run(["-e", str(engine), "-v", str(tmp_path), "-p", "x", "-q", "y"], capsys)
    assert_one_line_error(status, err, f"{tmp_path} holds no vocab.txt or tokenizer.json")
    assert "not found" not in err


def test_vocabulary_larger_than_the_embedding_table_is_refused(engine, vocab, capsys, tmp_path, tmp_path_factory):
    """The embedding plugin gives ids past its table zero vectors: answers would be silently wrong."""
    rows = json.loads((tiny_model_dir(tmp_path_factory) / "config.json").read_text())["vocab_size"]
    larger = tmp_path / "vocab.txt"
    larger.write_text(vocab.read_text(encoding="utf-8") + "extra1\nextra2\n", encoding="utf-8")
    status, _, err = run(["-e", str(engine), "-v", str(larger), "-s", str(SEQ_LEN), "-p", "x", "-q", "y"], capsys)
    assert_one_line_error(status, err, f"vocabulary has {rows + 2} entries, but the model's word embedding table has {rows} rows")


def test_engine_with_infinite_logits_is_an_error_not_a_nan_probability(vocab, capsys, tmp_path, tmp_path_factory):
    """Finite weights whose logits overflow float32: before, the answer came with "probability: nan"."""

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir(tmp_path_factory), model)
    tensors = load_file(str(model / "model.safetensors"))
    tensors["qa_outputs.weight"] = np.full_like(tensors["qa_outputs.weight"], 3e38)
    save_file(tensors, str(model / "model.safetensors"))
    engine = tmp_path / "overflow.engine"
    assert builder.main(["--hf", str(model), "-o", str(engine), "--backend", "portable", "--device", "cpu", "-s", str(SEQ_LEN)]) == 0
    capsys.readouterr()
    status, out, err = run(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-p", PASSAGE, "-q", QUESTION], capsys)
    assert_one_line_error(status, err, "the engine returned NaN or infinite logits")
    assert "nan" not in out


def test_control_characters_are_printed_escaped(engine, vocab, capsys):
    """Every passage word carries a terminal escape, so the answer (passage words) does too."""
    passage = "\x1b[31mred\x1b[0m \x1b]0;title\x07blue \u202egreen\u202c"
    status, out, err = run(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-p", passage, "-q", "Which\x1b[2J colour?"], capsys)
    assert status == 0, err
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\nPassage: \\x1b[31mred\\x1b[0m \\x1b]0;title\\x07blue \\u202egreen\\u202c\n" in out
    assert "\nQuestion: Which\\x1b[2J colour?\n" in out
    answer = re.search(r"^Answer: '(.*)'$", out, re.MULTILINE).group(1)
    assert "\\x1b" in answer or "\\u202e" in answer


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("tab\tand\nnewline stay", "tab\tand\nnewline stay"),
        ("\x1b[1mbold\r\x00\x7f", "\\x1b[1mbold\\r\\x00\\x7f"),
        ("\x9b2J C1 CSI, \u2066isolate\u2069", "\\x9b2J C1 CSI, \\u2066isolate\\u2069"),
        ("café, naïve, \u00a0, 漢字", "café, naïve, \u00a0, 漢字"),
    ],
)
def test_escape_controls(text, escaped):
    assert escape_controls(text) == escaped


def test_long_passage_shows_window_progress_on_a_terminal(engine, vocab, monkeypatch, tmp_path):
    """A 1 MB passage makes thousands of windows; a slow answer shows a progress bar on stderr."""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    passage = " ".join([PASSAGE] * 5)
    tokenizer = tokenization.FullTokenizer(str(vocab), do_lower_case=True)
    windows = len(dp.convert_example_to_features(dp.convert_doc_tokens(passage), QUESTION, tokenizer, SEQ_LEN, 128, 64))
    assert windows >= 5
    monkeypatch.setattr(qa, "PROGRESS_DELAY_S", 0.0)  # show it at once instead of after a slow start
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    status = inference.main(["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-p", passage, "-q", QUESTION, "--device", "cpu"])
    assert status == 0
    assert "Passage windows" in terminal.getvalue() and f"/{windows} " in terminal.getvalue()
