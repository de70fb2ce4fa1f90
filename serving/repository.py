#!/usr/bin/env python3
"""Writes a Triton Inference Server model repository for a BERT QA engine.

Two models: ``bert_engine`` (the engine: TensorRT's own backend for a TensorRT plan, a
Python-backend model around the project's runner for a portable engine) and ``bert_qa`` (text in,
answer out: tokenization, features, BLS calls of ``bert_engine``, answer extraction).
Inputs, outputs and shapes come from the engine itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from helpers import hf_tokenization  # noqa: E402
from helpers.cli import RunnerError, exit_on_error  # noqa: E402
from helpers.model_info import ModelInfo  # noqa: E402
from helpers.question_answering import AnswerExtractor  # noqa: E402
from helpers.runner import OUTPUT_NAME, EngineRunner, engine_backend, read_engine_file  # noqa: E402
from serving import ENGINE_MODEL, QA_MODEL  # noqa: E402

PORTABLE_ENGINE_FILE = "model.engine"
TENSORRT_PLAN_FILE = "model.plan"
TRITON_TYPES = {"torch.float32": "TYPE_FP32", "torch.float16": "TYPE_FP16", "torch.int32": "TYPE_INT32"}
# Each question becomes one or a few features; the QA model's batch only bounds one execute call.
QA_MAX_BATCH_SIZE = 64
# About 2 000 windows at S = 384; longer passages are refused instead of tying up an instance.
DEFAULT_MAX_CONTEXT_BYTES = 256 * 1024


@dataclass(frozen=True)
class EngineSignature:
    """What the model configs need to know about an engine."""

    backend: str
    """'portable' or 'tensorrt'."""
    varseqlen: bool
    sequence_length: int
    max_batch_size: int
    output_type: str
    """Triton data type of ``logits_out``."""
    model: ModelInfo = ModelInfo()
    """Family, tokenizer kind and token types, as the engine file records them."""


@dataclass(frozen=True)
class RepositoryOptions:
    sequence_length: int | None = None
    max_batch_size: int | None = None
    instances: int = 1
    max_queue_delay_us: int = 1000
    device: str = "cuda"
    gpus: tuple[int, ...] = ()
    qa_instances: int = 2
    doc_stride: int = 128
    max_query_length: int = 64
    n_best_size: int = 20
    max_answer_length: int = 30
    max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES
    cuda_graphs: bool = False
    project_root: str = str(REPO_ROOT)


def geometric_sizes(largest: int, per_octave: int = 8) -> list[int]:
    """1..``largest`` in steps of 2^(1/per_octave), ``largest`` included: the batch sizes (token
    counts, packed) that ``bert_engine`` runs once while it loads and, with CUDA graphs, captures."""
    sizes, size = {largest}, 1.0
    while size < largest:
        sizes.add(int(size))
        size *= 2.0 ** (1.0 / per_octave)
    return sorted(sizes)


def read_signature(engine_path: str | os.PathLike[str], sequence_length: int | None = None) -> EngineSignature:
    """The signature of an engine, read through the runner (a portable engine is loaded on the CPU)."""
    portable = engine_backend(read_engine_file(engine_path)) == "portable"
    runner = EngineRunner(engine_path, device="cpu" if portable else None)
    engine = runner.engine
    profiles = range(engine.num_optimization_profiles)
    if runner.varseqlen:
        max_seqlen = max(runner.profile_shapes("max_seqlen", p)[1][0] for p in profiles)
        batch = max(runner.profile_shapes("cu_seqlens", p)[1][0] - 1 for p in profiles)
        if sequence_length not in (None, max_seqlen):
            raise RunnerError(f"-s {sequence_length}: this variable-length engine takes sequences of up to {max_seqlen} tokens")
        return EngineSignature(runner.backend, True, max_seqlen, batch, TRITON_TYPES[str(runner.dtypes[OUTPUT_NAME])], runner.model)
    shapes = [runner.profile_shapes("input_ids", p) for p in profiles]
    lengths = sorted({s for low, high in shapes for s in range(low[1], high[1] + 1)})
    length = lengths[-1] if sequence_length is None else sequence_length
    if length not in lengths:
        raise RunnerError(f"-s {length}: no profile of this engine runs sequence length {length} (it runs {lengths[0]}..{lengths[-1]})")
    batches = [high[0] for low, high in shapes if low[1] <= length <= high[1] and low[0] == 1]
    if not batches:
        raise RunnerError(
            f"this engine does not run batch size 1 at sequence length {length}, and Triton's batches start at 1: "
            "build it with -b 1 as well"
        )
    return EngineSignature(runner.backend, False, length, max(batches), TRITON_TYPES[str(runner.dtypes[OUTPUT_NAME])], runner.model)


def _parameters(values: dict[str, object]) -> str:
    return "\n".join(
        f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}' for key, value in values.items()
    )


def _instance_group(count: int, kind: str, gpus: tuple[int, ...]) -> str:
    if kind == "KIND_GPU" and gpus:
        return f"instance_group [ {{ count: {count} kind: KIND_GPU gpus: [ {', '.join(map(str, gpus))} ] }} ]"
    return f"instance_group [ {{ count: {count} kind: {kind} }} ]"


def _dynamic_batching(max_queue_delay_us: int) -> str:
    return f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}"


def model_parameters(model: ModelInfo) -> dict[str, object]:
    return {"family": model.family, "tokenizer": model.tokenizer, "token_types": model.token_types}


def engine_config(signature: EngineSignature, options: RepositoryOptions, max_batch_size: int) -> str:
    """config.pbtxt of ``bert_engine``."""
    s = signature.sequence_length
    kind = "KIND_GPU" if options.device.startswith("cuda") else "KIND_CPU"
    lines = [f'name: "{ENGINE_MODEL}"']
    if signature.backend == "tensorrt":
        lines.append('platform: "tensorrt_plan"')
    else:
        lines.append('backend: "python"')
    lines.append(f"max_batch_size: {max_batch_size}")
    if signature.varseqlen:
        lines += [
            "input [",
            '  { name: "input_ids" data_type: TYPE_INT32 dims: [ -1 ] allow_ragged_batch: true },',
            '  { name: "segment_ids" data_type: TYPE_INT32 dims: [ -1 ] allow_ragged_batch: true }',
            "]",
        ]
        if signature.backend == "tensorrt":
            # Triton concatenates the ragged requests and describes the batch to the plan.
            lines += [
                "batch_input [",
                '  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO target_name: "cu_seqlens" data_type: TYPE_INT32 source_input: "input_ids" },',
                '  { kind: BATCH_MAX_ELEMENT_COUNT_AS_SHAPE target_name: "max_seqlen" data_type: TYPE_INT32 source_input: "input_ids" }',
                "]",
            ]
        lines += [
            "output [",
            f'  {{ name: "{OUTPUT_NAME}" data_type: {signature.output_type} dims: [ 2, -1, 1, 1 ] }}',
            "]",
        ]
    else:
        lines += [
            "input [",
            f'  {{ name: "input_ids" data_type: TYPE_INT32 dims: [ {s} ] }},',
            f'  {{ name: "segment_ids" data_type: TYPE_INT32 dims: [ {s} ] }},',
            f'  {{ name: "input_mask" data_type: TYPE_INT32 dims: [ {s} ] }}',
            "]",
            "output [",
            f'  {{ name: "{OUTPUT_NAME}" data_type: {signature.output_type} dims: [ {s}, 2, 1, 1 ] }}',
            "]",
        ]
    lines.append(_dynamic_batching(options.max_queue_delay_us))
    lines.append(_instance_group(options.instances, kind, options.gpus))
    if signature.backend == "portable":
        lines.append(
            _parameters(
                {
                    "engine_file": PORTABLE_ENGINE_FILE,
                    "device": options.device,
                    "sequence_length": s,
                    "varseqlen": str(signature.varseqlen).lower(),
                    "cuda_graphs": str(options.cuda_graphs).lower(),
                    **model_parameters(signature.model),
                }
            )
        )
    return "\n".join(lines) + "\n"


def qa_config(signature: EngineSignature, options: RepositoryOptions, tokenizer_file: str, engine_max_batch_size: int) -> str:
    """config.pbtxt of ``bert_qa``.  A question's windows go to ``bert_engine`` as requests of up to
    its max_batch_size rows, except to a variable-length TensorRT plan: Triton's ragged batching
    takes one sequence per request there."""
    ragged = signature.backend == "tensorrt" and signature.varseqlen
    lines = [
        f'name: "{QA_MODEL}"',
        'backend: "python"',
        f"max_batch_size: {QA_MAX_BATCH_SIZE}",
        "input [",
        '  { name: "question" data_type: TYPE_STRING dims: [ 1 ] },',
        '  { name: "context" data_type: TYPE_STRING dims: [ 1 ] }',
        "]",
        "output [",
        '  { name: "answer" data_type: TYPE_STRING dims: [ 1 ] },',
        '  { name: "probability" data_type: TYPE_FP32 dims: [ 1 ] }',
        "]",
        _dynamic_batching(options.max_queue_delay_us),
        _instance_group(options.qa_instances, "KIND_CPU", ()),
        _parameters(
            {
                "engine_model": ENGINE_MODEL,
                "vocab_file": tokenizer_file,
                "sequence_length": signature.sequence_length,
                "varseqlen": str(signature.varseqlen).lower(),
                "doc_stride": options.doc_stride,
                "max_query_length": options.max_query_length,
                "n_best_size": options.n_best_size,
                "max_answer_length": options.max_answer_length,
                "max_context_bytes": options.max_context_bytes,
                "engine_request_rows": 1 if ragged else engine_max_batch_size,
                **model_parameters(signature.model),
            }
        ),
    ]
    return "\n".join(lines) + "\n"


def entry_point(module: str, class_name: str, project_root: str) -> str:
    """model.py of a Python-backend model: the project's class under the name Triton looks for."""
    return (
        f'"""Triton Python-backend entry point: {module}.{class_name} of the demoBERT project."""\n\n'
        "import sys\n\n"
        f"sys.path.insert(0, {project_root!r})\n\n"
        f"from {module} import {class_name} as TritonPythonModel  # noqa: E402,F401\n"
    )


def check_options(signature: EngineSignature, options: RepositoryOptions) -> int:
    """The engine model's max_batch_size, after checking the options against the engine."""
    if options.instances < 1 or options.qa_instances < 1:
        raise RunnerError("--instances and --qa-instances must be at least 1")
    if options.max_queue_delay_us < 0:
        raise RunnerError(f"--max-queue-delay-us must be 0 or more, got {options.max_queue_delay_us}")
    if options.device != "cpu" and not (options.device == "cuda" or options.device.startswith("cuda:")):
        raise RunnerError(f"--device must be cpu, cuda or cuda:N, got {options.device!r}")
    if options.gpus and options.device == "cpu":
        raise RunnerError("--gpus needs --device cuda")
    if signature.backend == "tensorrt" and options.device == "cpu":
        raise RunnerError("a TensorRT plan runs only on GPUs; leave --device at cuda")
    if any(g < 0 for g in options.gpus):
        raise RunnerError(f"--gpus takes GPU indexes, got {list(options.gpus)}")
    batch = signature.max_batch_size if options.max_batch_size is None else options.max_batch_size
    if not 1 <= batch <= signature.max_batch_size:
        raise RunnerError(f"--max-batch-size {batch}: this engine runs batches of 1 to {signature.max_batch_size}")
    return batch


def write_repository(
    engine_path: str | os.PathLike[str],
    vocab_file: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: RepositoryOptions,
) -> EngineSignature:
    """Write the two models under ``output`` (a new or empty folder); return the engine's signature.

    The repository is written beside ``output`` first and moved into place whole, so a failure
    leaves nothing half-written.
    """
    target = Path(output)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise RunnerError(f"output {output} exists and is not an empty folder")
    if not target.parent.is_dir():
        raise RunnerError(f"output folder does not exist: {target.parent}")
    signature = read_signature(engine_path, options.sequence_length)
    max_batch_size = check_options(signature, options)
    try:
        tokenizer_name, tokenizer_file = hf_tokenization.vocabulary_source(str(vocab_file), signature.model)
    except hf_tokenization.TokenizerFileError as err:
        raise RunnerError(str(err)) from None
    AnswerExtractor(tokenizer_file, model=signature.model)  # refuses a tokenizer the engine cannot read

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        engine_dir = staging / ENGINE_MODEL
        (engine_dir / "1").mkdir(parents=True)
        (engine_dir / "config.pbtxt").write_text(engine_config(signature, options, max_batch_size))
        if signature.backend == "tensorrt":
            shutil.copyfile(engine_path, engine_dir / "1" / TENSORRT_PLAN_FILE)
        else:
            shutil.copyfile(engine_path, engine_dir / "1" / PORTABLE_ENGINE_FILE)
            (engine_dir / "1" / "model.py").write_text(entry_point("serving.engine_model", "EngineModel", options.project_root))
        qa_dir = staging / QA_MODEL
        (qa_dir / "1").mkdir(parents=True)
        (qa_dir / "config.pbtxt").write_text(qa_config(signature, options, tokenizer_name, max_batch_size))
        shutil.copyfile(tokenizer_file, qa_dir / "1" / tokenizer_name)
        (qa_dir / "1" / "model.py").write_text(entry_point("serving.qa_model", "QuestionAnsweringModel", options.project_root))
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return signature


def parse_gpus(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated GPU indexes, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-e", "--engine", required=True, help="Engine file (TensorRT plan or portable engine)")
    parser.add_argument("-v", "--vocab-file", required=True, help="The model's vocab.txt, tokenizer.json or checkpoint folder")
    parser.add_argument("-o", "--output", required=True, help="Model repository folder to create (new or empty)")
    parser.add_argument("-s", "--sequence-length", type=int, help="Sequence length to serve (default: the engine's largest)")
    parser.add_argument("--max-batch-size", type=int, help="Largest batch Triton forms (default: the engine's largest)")
    parser.add_argument("--instances", type=int, default=1, help="Engine instances per GPU (or on the CPU) (default: 1)")
    parser.add_argument("--qa-instances", type=int, default=2, help="CPU instances of the text model bert_qa (default: 2)")
    parser.add_argument("--max-queue-delay-us", type=int, default=1000, help="Dynamic batcher's wait for a fuller batch (default: 1000)")
    parser.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N (default: cuda); portable engines only run on the CPU")
    parser.add_argument("--gpus", type=parse_gpus, default=(), help="Comma-separated GPU indexes for the engine instances (default: all)")
    parser.add_argument("--cuda-graphs", action="store_true", help="Portable engine: replay a CUDA graph per batch shape")
    parser.add_argument("--max-context-bytes", type=int, default=DEFAULT_MAX_CONTEXT_BYTES, help="Longest passage bert_qa accepts, in UTF-8 bytes")
    parser.add_argument("--doc-stride", type=int, default=128, help="Stride between the windows of a long passage")
    parser.add_argument("--max-query-length", type=int, default=64, help="Questions are truncated to this many tokens")
    parser.add_argument("--n-best-size", type=int, default=20, help="Number of candidate answers kept")
    parser.add_argument("--max-answer-length", type=int, default=30, help="Longest answer, in tokens")
    parser.add_argument("--project-root", default=str(REPO_ROOT), help="Where the server finds this project's code (default: this checkout)")
    return parser


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = RepositoryOptions(
        sequence_length=args.sequence_length,
        max_batch_size=args.max_batch_size,
        instances=args.instances,
        max_queue_delay_us=args.max_queue_delay_us,
        device=args.device,
        gpus=args.gpus,
        qa_instances=args.qa_instances,
        doc_stride=args.doc_stride,
        max_query_length=args.max_query_length,
        n_best_size=args.n_best_size,
        max_answer_length=args.max_answer_length,
        max_context_bytes=args.max_context_bytes,
        cuda_graphs=args.cuda_graphs,
        project_root=args.project_root,
    )
    signature = write_repository(args.engine, args.vocab_file, args.output, options)
    layout = "variable-length (packed)" if signature.varseqlen else f"fixed length {signature.sequence_length}"
    print(f"Wrote {args.output}: {ENGINE_MODEL} ({signature.backend}, {layout}, batch up to {options.max_batch_size or signature.max_batch_size}) and {QA_MODEL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
