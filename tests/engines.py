"""Tiny portable engines and a HuggingFace oracle, shared by the runner/inference/perf/script tests,
and the INT8 engine tests' build steps (test_int8_engines.py, test_int8_packed.py, test_smoothing.py;
their model and engines are conftest.py's ``int8_workdir`` and ``fp32_and_ptq_engines``).

Models and engines are built once per test process (cached by their build options).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import builder  # noqa: E402
import builder_varseqlen  # noqa: E402
from bench import int8_accuracy as ia  # noqa: E402
import helpers.data_processing as dp  # noqa: E402
import helpers.tokenization as tokenization  # noqa: E402
from helpers.demo_model import write_tiny_qa_model  # noqa: E402
from helpers.smoothing import FC1_LAYER, HEAD_LAYER, QKV_LAYER  # noqa: E402

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
        _cache[key] = write_tiny_qa_model(tmp_path_factory.mktemp("tiny-model") / "hf", seed=1234)
    return _cache[key]


def tiny_engine(tmp_path_factory, batch_sizes: tuple[int, ...] = (1,), seq_lengths: tuple[int, ...] = (SEQ_LEN,),
                packed: bool = False) -> Path:
    """A portable FP32 engine of the tiny model with one profile per batch size (CPU build):
    builder.py's, or builder_varseqlen.py's when ``packed``."""
    key = ("engine", batch_sizes, seq_lengths, packed)
    if key not in _cache:
        model = tiny_model_dir(tmp_path_factory)
        engine = tmp_path_factory.mktemp("tiny-engine") / "tiny.engine"
        argv = ["--hf", str(model), "-o", str(engine), "--backend", "portable", "--device", "cpu"]
        for b in batch_sizes:
            argv += ["-b", str(b)]
        for s in seq_lengths:
            argv += ["-s", str(s)]
        assert (builder_varseqlen if packed else builder).main(argv) == 0
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


# ---------------------------------------------------------------------------------------------
# INT8 engines: builder.py / builder_varseqlen.py on the portable engine (CPU), from a tiny random
# BERT with the real vocabulary and a SQuAD head fitted on bench/int8_accuracy.py's hand-made set

INT8_SEQ = 128


def build(env, output, *options):
    assert builder.main(["--hf", str(env["work"] / "hf"), "-o", str(output), "-b", "4", "-s", str(INT8_SEQ),
                         "--backend", "portable", "--device", "cpu", *options]) == 0


def build_packed(env, output, *options, batch=20):
    assert builder_varseqlen.main(["--hf", str(env["work"] / "hf"), "-o", str(output), "-b", str(batch), "-s", str(INT8_SEQ),
                                   "--backend", "portable", "--device", "cpu", *options]) == 0


def ptq_options(env, cache, calib_num=20):
    return ["-i", "-j", env["squad"], "-v", env["vocab"], "-n", str(calib_num), "-p", str(cache)]


def engine_logits(path, features):
    return ia.run_engine(path, features.inputs(), "cpu", chunk=4)


def run_hf(model, features, rows=slice(None), hooks=()) -> None:
    """HF's forward pass over ``rows`` of ``features`` (no gradients); then ``hooks`` are removed."""
    try:
        with torch.no_grad():
            model(input_ids=torch.as_tensor(features.input_ids[rows], dtype=torch.long),
                  token_type_ids=torch.as_tensor(features.segment_ids[rows], dtype=torch.long),
                  attention_mask=torch.as_tensor(features.input_mask[rows], dtype=torch.long))
    finally:
        for hook in hooks:
            hook.remove()


def hf_dense_inputs(model, features, rows=slice(None)):
    """Per smoothed dense layer of the builders (QKV, FC1, the head), HF's input activations [n, S, channels]."""
    seen = {}
    modules = {HEAD_LAYER: model.qa_outputs}
    for i, layer in enumerate(model.bert.encoder.layer):
        modules[f"l{i}_{QKV_LAYER}"] = layer.attention.self.query
        modules[f"l{i}_{FC1_LAYER}"] = layer.intermediate.dense
    run_hf(model, features, rows, [module.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0].detach()))
                                   for name, module in modules.items()])
    return seen


# Bad input: one line on stderr, non-zero exit, no engine and no cache written


def expect_clean_failure(env, capsys, options, message, cache=None, packed=False):
    """builder.py (builder_varseqlen.py when ``packed``) fails with ``message``; of the files named
    bad.engine* / bad_cache* (bad_packed.engine* / bad_packed_cache*), only ``cache`` remains."""
    script, name = (builder_varseqlen, "bad_packed") if packed else (builder, "bad")
    engine = env["work"] / f"{name}.engine"
    status = script.main(["--hf", str(env["work"] / "hf"), "-o", str(engine), "-b", "4", "-s", str(INT8_SEQ),
                          "--backend", "portable", "--device", "cpu", *options])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status != 0
    assert len(err) == 1 and message in err[0], err
    assert not engine.exists()
    leftovers = [p.name for p in env["work"].iterdir() if p.name.startswith((f"{name}.engine", f"{name}_cache"))]
    assert leftovers == ([] if cache is None else [cache.name])
