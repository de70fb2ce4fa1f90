"""Tiny portable engines and a HuggingFace oracle, shared by the runner/inference/perf/script tests.

Models and engines are built once per test process (cached by their build options).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SEQ_LEN = 64
PASSAGE = (
    "TensorRT is a high performance deep learning inference platform that delivers low latency and high "
    "throughput for apps such as recommenders, speech and image/video on NVIDIA GPUs. It includes parsers "
    "to import models, and plugins to support novel ops and layers before applying optimizations for inference."
)
QUESTION = "What is TensorRT?"

_cache: dict[tuple, Path] = {}


def run_main(main, argv, capsys):
    """(exit status, stdout, stderr) of a script's main() in this process."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def tiny_model_dir(tmp_path_factory) -> Path:
    """A seeded random 2-layer BERT QA folder with MiniLM's uncased vocabulary."""
    key = ("model",)
    if key not in _cache:
        from helpers.demo_model import write_tiny_qa_model

        _cache[key] = write_tiny_qa_model(tmp_path_factory.mktemp("tiny-model") / "hf", seed=1234)
    return _cache[key]


def tiny_engine(tmp_path_factory, batch_sizes: tuple[int, ...] = (1,), seq_lengths: tuple[int, ...] = (SEQ_LEN,)) -> Path:
    """A portable FP32 engine of the tiny model with one profile per batch size (CPU build)."""
    key = ("engine", batch_sizes, seq_lengths)
    if key not in _cache:
        import builder

        model = tiny_model_dir(tmp_path_factory)
        engine = tmp_path_factory.mktemp("tiny-engine") / "tiny.engine"
        argv = ["--hf", str(model), "-o", str(engine), "--backend", "portable", "--device", "cpu"]
        for b in batch_sizes:
            argv += ["-b", str(b)]
        for s in seq_lengths:
            argv += ["-s", str(s)]
        assert builder.main(argv) == 0
        _cache[key] = engine
    return _cache[key]


def hf_model(model_dir: Path):
    from transformers import BertForQuestionAnswering

    key = ("hf", str(model_dir))
    if key not in _cache:
        _cache[key] = BertForQuestionAnswering.from_pretrained(str(model_dir)).eval()
    return _cache[key]


def oracle_answer(model_dir: Path, passage_tokens: list[str], question: str, seq_len: int = SEQ_LEN):
    """(text, probability) from HuggingFace logits through the same SQuAD post-processing."""
    import torch

    import helpers.data_processing as dp
    import helpers.tokenization as tokenization

    tokenizer = tokenization.FullTokenizer(vocab_file=str(model_dir / "vocab.txt"), do_lower_case=True)
    features = dp.convert_example_to_features(passage_tokens, question, tokenizer, seq_len, 128, 64)
    model = hf_model(model_dir)
    Output = collections.namedtuple("Output", ["start_logits", "end_logits", "feature_index"])
    outputs = []
    for index, feature in enumerate(features):
        with torch.no_grad():
            out = model(
                input_ids=torch.as_tensor(np.asarray(feature.input_ids)[None], dtype=torch.long),
                token_type_ids=torch.as_tensor(np.asarray(feature.segment_ids)[None], dtype=torch.long),
                attention_mask=torch.as_tensor(np.asarray(feature.input_mask)[None], dtype=torch.long),
            )
        outputs.append(Output(out.start_logits[0].numpy(), out.end_logits[0].numpy(), index))
    text, nbest, _ = dp.get_predictions(passage_tokens, features, outputs, 20, 30)
    return text, nbest[0]["probability"]
