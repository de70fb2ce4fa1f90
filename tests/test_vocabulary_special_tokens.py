"""A vocabulary without [CLS] or [SEP] (every feature needs both) is refused when it is loaded: by
inference.py and inference_c.py before the passage is printed, and by INT8 calibration before
anything is built; one line each, naming the token."""

from __future__ import annotations

from pathlib import Path

import pytest
from engines import PASSAGE, QUESTION, SEQ_LEN, run_main, tiny_model_dir
from squad_fixtures import make_qa, write_squad_file

import builder
import helpers.tokenization as tokenization
import inference
import inference_c


def vocab_without(tmp_path: Path, source: Path, *tokens: str) -> Path:
    """``source`` with each of ``tokens`` renamed in place (every other id unchanged)."""
    lines = source.read_text(encoding="utf-8").splitlines()
    assert all(token in lines for token in tokens)
    path = tmp_path / f"vocab-without-{'-'.join(t.strip('[]') for t in tokens)}.txt"
    path.write_text("\n".join(f"[unused-{line}]" if line in tokens else line for line in lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("missing", [("[CLS]",), ("[SEP]",), ("[CLS]", "[SEP]")])
def test_tokenizers_refuse_a_vocabulary_without_cls_or_sep(tmp_path, tmp_path_factory, missing):
    vocab = vocab_without(tmp_path, tiny_model_dir(tmp_path_factory) / "vocab.txt", *missing)
    for front_end in (tokenization.FullTokenizer, tokenization.BertTokenizer):
        with pytest.raises(tokenization.VocabError) as err:
            front_end(str(vocab))
        assert str(err.value) == f"{vocab}: vocabulary has no {' or '.join(missing)} token"


@pytest.mark.parametrize("script", [inference, inference_c])
def test_runners_refuse_it_before_printing_the_passage(engine, tmp_path, tmp_path_factory, capsys, script):
    vocab = vocab_without(tmp_path, tiny_model_dir(tmp_path_factory) / "vocab.txt", "[SEP]")
    argv = ["-e", str(engine), "-v", str(vocab), "-s", str(SEQ_LEN), "-p", PASSAGE, "-q", QUESTION, "--device", "cpu"]
    status, out, err = run_main(script.main, argv, capsys)
    assert status == 1 and out == ""
    assert err == f"{script.__name__}.py: error: {vocab}: vocabulary has no [SEP] token\n"


def test_calibration_refuses_it_before_building(tmp_path, tmp_path_factory, capsys):
    model = tiny_model_dir(tmp_path_factory)
    vocab = vocab_without(tmp_path, model / "vocab.txt", "[CLS]")
    squad = write_squad_file(tmp_path / "calib.json", [(PASSAGE, [make_qa("q1", QUESTION)])])
    engine = tmp_path / "int8.engine"
    argv = ["--hf", str(model), "-o", str(engine), "-i", "-j", squad, "-v", str(vocab), "-n", "1", "-s", str(SEQ_LEN),
            "-p", str(tmp_path / "calib.cache"), "--backend", "portable", "--device", "cpu"]
    status, out, err = run_main(builder.main, argv, capsys)
    assert status == 1
    assert err.splitlines()[-1] == f"error: {vocab}: vocabulary has no [CLS] token"
    assert "Calibrating" not in out and "build engine" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.json", vocab.name]
