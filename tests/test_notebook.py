"""inference.ipynb runs top to bottom on CPU with a tiny engine and answers like inference.py."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient

import helpers.data_processing as dp
from engines import REPO_ROOT, SEQ_LEN, oracle_answer, tiny_engine, tiny_model_dir


def test_notebook_executes_and_answers(tmp_path_factory, monkeypatch):
    engine = tiny_engine(tmp_path_factory)
    model = tiny_model_dir(tmp_path_factory)
    monkeypatch.setenv("DEMOBERT_ENGINE", str(engine))
    monkeypatch.setenv("DEMOBERT_VOCAB", str(model / "vocab.txt"))
    monkeypatch.setenv("DEMOBERT_SEQ_LEN", str(SEQ_LEN))
    monkeypatch.setenv("DEMOBERT_DEVICE", "cpu")
    notebook = nbformat.read(REPO_ROOT / "inference.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO_ROOT)}}).execute()

    text = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    )
    assert "portable engine on cpu" in text
    assert re.search(r"^Running Inference at \d+\.\d{3} Sentences/Sec$", text, re.M)
    answer = re.search(r"^Answer: '(.*)'$", text, re.M)
    assert answer, text
    # The notebook's passage and question, answered by the HuggingFace oracle.
    source = "\n".join(cell.source for cell in notebook.cells)
    namespace: dict = {}
    exec(re.search(r"passage = \(.*?\n\)", source, re.S).group(0), namespace)
    question = re.search(r'^question = "(.*)"$', source, re.M).group(1)
    expected, probability = oracle_answer(model, dp.convert_doc_tokens(namespace["passage"]), question)
    assert answer.group(1) == expected
    assert float(re.search(r"^with prob: (\d+\.\d{3})%$", text, re.M).group(1)) == pytest.approx(probability * 100, abs=0.01)
