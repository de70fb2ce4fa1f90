#!/usr/bin/env python3
"""Build a variable-sequence-length BERT SQuAD engine: packed tokens + ``cu_seqlens``, no padding.

All sequences of a batch are concatenated into one token stream of T tokens; ``cu_seqlens`` holds
the B+1 prefix sums of their lengths, and only the *length* of ``max_seqlen`` is read (the longest
sequence allowed).  The output ``logits_out`` is ``[2, T, 1, 1]``: start logits, then end logits.
(docs/SPEC.md: "builder_varseqlen.py options", "Variable-length network", "Plugins", "Megatron
pickle", "QAT ranges".)

INT8 comes from a QAT model (``-x``, ``-pt``, ``-pkl``) or, on the portable engine, from post-training
calibration (``-m``, ``--hf``): an FP32 pre-build calibrates on packed SQuAD batches
(``helpers.calibrator.BertPackedCalibrator``) and writes the ``-p`` cache the INT8 build reads.

The network (``varseqlen_network``) is packed ``[T, E, 1, 1]``, or interleaved ``[1, E, T, 1]`` with
``--int8 -il`` and ``--megatron``; ``--megatron`` builds Megatron-BERT's residual stream.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bert_weights import BertConfig, WeightMap, check_weights, default_calibration_cache_name, pack_qkv
from bert_weights.names import BQKV, WQKV
from builder_calibration import (
    add_8bit_options,
    add_calibration_options,
    calibration_mode,
    check_8bit_options,
    check_calibration_vocabulary,
    post_training_calibration,
    set_8bit_flags,
    warn_if_cache_misses_network,
)
from builder_utils import (
    WEIGHT_LOADERS,
    add_common_builder_options,
    check_output_paths,
    compute_capability,
    first_weight_source,
    load_builder_config,
    load_timing_cache,
    model_info,
    network_creation_flags,
    parse_builder_args,
    run_builder,
    save_engine,
    serialize_network,
    start_backend,
)
from helpers.backend import trt
from helpers.calibrator import BertPackedCalibrator, PackedChannelStatistics
from helpers.sparsity import structured_layers
from varseqlen_network import PackedShape, VarSeqLenNetwork, batch_profiles

XAVIER_MESSAGE = "This variable-length BERT demo only support Xavier+ GPU."
MEGATRON_PRECISION_MESSAGE = "Megatron BERT currently only supports int8 and interleaved."
MEGATRON_PICKLE_MESSAGE = "Megatron BERT currently only supports loading a pickle weights dictionary."
NO_WEIGHTS_MESSAGE = (
    "You need either specify TF checkpoint using option --ckpt, ONNX using option --onnx, "
    "PyTorch using option --pytorch, or Pickle weight dictionary using option --pickle to build TRT BERT model."
)
PTQ_MESSAGE = (
    "Post training calibration is not supported in variable-length BERT on TensorRT "
    "(the portable engine calibrates, --backend portable; or build from a QAT model)"
)
TENSORRT_FP32_MESSAGE = (
    "variable-length BERT on TensorRT needs --fp16 or --int8: its attention plugin has no FP32 kernels "
    "(the portable engine, --backend portable, runs FP32)"
)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="TensorRT BERT Sample", formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("-m", "--ckpt", help="TensorFlow checkpoint prefix; only useful without --int8 (default: None)")
    parser.add_argument("-x", "--onnx", help="ONNX model with fake-quantization (QAT) nodes (default: None)")
    parser.add_argument("-pt", "--pytorch", help='PyTorch checkpoint holding {"model": state_dict} (default: None)')
    parser.add_argument("-pkl", "--pickle", help="Pickled Megatron weight dictionary (default: None)")
    parser.add_argument(
        "-o", "--output", required=True, default="bert_base_384.engine", help="Engine file to write (default: bert_base_384.engine)"
    )
    parser.add_argument(
        "-b",
        "--max-batch-size",
        default=[],
        action="append",
        type=int,
        help="Largest number of sequences per batch; repeat for several optimization profiles, which are\n"
        "added in the order given. A profile takes up to b sequences and b*S tokens. (default: [1])",
    )
    parser.add_argument(
        "-s", "--max-sequence-length", default=128, type=int, help="Longest sequence the engine accepts (default: 128)"
    )
    parser.add_argument(
        "-c",
        "--config-dir",
        help="Folder holding bert_config.json; required unless --hf is given (default: None)",
    )
    parser.add_argument("-f", "--fp16", action="store_true", help="Allow FP16 kernels and FP16 plugin I/O (default: false)")
    parser.add_argument(
        "-i",
        "--int8",
        action="store_true",
        help="Allow INT8 kernels: QAT ranges (-x, -pt, -pkl) or, on the portable engine, post-training\n"
        "calibration on packed SQuAD batches (-m, --hf) (default: false)",
    )
    parser.add_argument(
        "-w", "--workspace-size", default=None, type=int, help="Workspace memory limit in MiB; unlimited when absent (default: None)"
    )
    add_calibration_options(
        parser,
        "Number of calibration questions (the first window of each, without padding), packed\n"
        "into batches of the first -b times -s tokens, or of all of them if they have fewer (default: 100)",
    )
    parser.add_argument(
        "-il", "--interleaved", action="store_true", help="INT8 interleaved layout [1, E, T, 1]; only with --int8 (default: false)"
    )
    parser.add_argument("-tcf", "--timing-cache-file", help="Timing cache to read before and write after the build (default: None)")
    parser.add_argument(
        "-sp", "--sparse", action="store_true", help="Let 2:4-structured weights run on sparse kernels (default: false)"
    )
    parser.add_argument(
        "--megatron", action="store_true", help="Megatron-BERT residuals (pre-LayerNorm sums); needs --pickle (default: false)"
    )
    add_8bit_options(parser)
    add_common_builder_options(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_builder_args(parser, argv)
    args.max_batch_size = args.max_batch_size or [1]
    if min(args.max_batch_size) < 1:
        parser.error(f"batch size must be positive, got {min(args.max_batch_size)}")
    if args.max_sequence_length < 1:
        parser.error(f"sequence length must be positive, got {args.max_sequence_length}")
    if args.calib_num < 1:
        parser.error(f"-n/--calib-num must be positive, got {args.calib_num}")
    return args


# ---------------------------------------------------------------------------------------------
# Options


def check_options(args: argparse.Namespace, backend: str) -> None:
    """The original's option errors, in its order.

    The GPU and Megatron-precision limits come from TensorRT's kernels, so only the TensorRT
    backend enforces them; the portable engine runs Megatron in FP32/FP16 as well.
    """
    if backend == "tensorrt" and compute_capability(backend) < 72:
        raise RuntimeError(XAVIER_MESSAGE)
    if args.megatron:
        if backend == "tensorrt" and not (args.interleaved and args.int8):
            raise RuntimeError(MEGATRON_PRECISION_MESSAGE)
        if not args.pickle:
            raise RuntimeError(MEGATRON_PICKLE_MESSAGE)
    check_8bit_options(args, backend, uses_qat(args))
    if backend == "tensorrt" and args.int8 and not uses_qat(args):
        raise RuntimeError(PTQ_MESSAGE)


def weight_source(args: argparse.Namespace) -> tuple[str, str]:
    """(kind, path) of the weights to use: onnx > pytorch > ckpt > pickle > hf."""
    return first_weight_source(args, ("onnx", "pytorch", "ckpt", "pickle", "hf"), NO_WEIGHTS_MESSAGE)


def uses_interleaved_network(args: argparse.Namespace) -> bool:
    """INT8 interleaved as in the original; Megatron always (its plugins exist only in that layout)."""
    return bool(args.int8 and args.interleaved) or bool(args.megatron)


def uses_qat(args: argparse.Namespace) -> bool:
    """INT8 ranges come with the model: ONNX, PyTorch (QAT) and Megatron pickles carry them."""
    return any(getattr(args, kind) is not None for kind in ("onnx", "pytorch", "pickle"))


def load_config(args: argparse.Namespace, logger: trt.ILogger) -> BertConfig:
    options = dict(
        use_fp16=args.fp16,
        use_int8=args.int8,
        use_qat=args.int8 and uses_qat(args),
        use_fp8=args.fp8,
        use_sparsity=args.sparse,
        timing_cache=args.timing_cache_file,
        use_deprecated_plugins=args.use_deprecated_plugins,
        interleaved=uses_interleaved_network(args),
    )
    return load_builder_config(args, logger, **options)


def per_head_qkv(weights: WeightMap, config: BertConfig) -> None:
    """Reorder pickled QKV tensors (q|k|v blocks) in place to the packed plugins' per-head order."""
    hidden = config.hidden_size
    for layer in range(config.num_hidden_layers):
        kernel_name, bias_name = f"l{layer}_{WQKV}", f"l{layer}_{BQKV}"
        kernel = weights[kernel_name].reshape(3, hidden, hidden)
        bias = weights[bias_name].reshape(3, hidden)
        weights[kernel_name], weights[bias_name] = pack_qkv(
            (kernel[0], bias[0]), (kernel[1], bias[1]), (kernel[2], bias[2]), config.num_attention_heads
        )


def load_weights(kind: str, path: str, config: BertConfig, max_sequence_length: int) -> WeightMap:
    weights = WEIGHT_LOADERS[kind](path, config)
    check_weights(weights, config, max_sequence_length)
    if kind == "pickle" and not config.interleaved:
        per_head_qkv(weights, config)
    return weights


# ---------------------------------------------------------------------------------------------
# Build


def configure_builder(
    builder_config: trt.IBuilderConfig,
    config: BertConfig,
    workspace_size: int | None,
    verbose: bool,
    logger: trt.ILogger,
    calibrator: trt.IInt8Calibrator | None = None,
) -> None:
    if workspace_size is not None:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_size * 1024 * 1024)
    builder_config.avg_timing_iterations = 8
    if config.use_fp16:
        builder_config.set_flag(trt.BuilderFlag.FP16)
    set_8bit_flags(builder_config, config, calibrator)
    if verbose:
        builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    builder_config.set_tactic_sources(builder_config.get_tactic_sources() & ~(1 << int(trt.TacticSource.CUDNN)))
    if config.timing_cache is not None:
        load_timing_cache(builder_config, config.timing_cache, logger)
    if config.use_sparsity:
        logger.log(trt.Logger.INFO, "Setting sparsity flag on builder_config.")
        builder_config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)


def log_sparse_layers(network: trt.INetworkDefinition, logger: trt.ILogger) -> None:
    """Which dense layers can use sparse kernels under -sp: only those whose weights are 2:4."""
    structured, dense = structured_layers(network)
    logger.log(trt.Logger.INFO, f"Sparse (2:4) weights in {len(structured)} of {len(structured) + len(dense)} dense layers: "
               + (", ".join(structured) or "none"))
    if dense:
        logger.log(trt.Logger.INFO, f"Dense weights (not 2:4), kept dense: {', '.join(dense)}")


def build_engine(
    logger: trt.ILogger,
    config: BertConfig,
    weights: WeightMap,
    profiles: Sequence[PackedShape],
    max_sequence_length: int,
    workspace_size: int | None = None,
    megatron: bool = False,
    verbose: bool = False,
    calibrator: trt.IInt8Calibrator | None = None,
) -> trt.IHostMemory:
    """Build and serialize the packed engine; saves the timing cache when one was asked for."""
    builder = trt.Builder(logger)
    network = builder.create_network(network_creation_flags())
    builder_config = builder.create_builder_config()
    configure_builder(builder_config, config, workspace_size, verbose, logger, calibrator)
    VarSeqLenNetwork(network, config, weights, megatron).populate(builder, builder_config, profiles, max_sequence_length)
    if config.use_sparsity:
        log_sparse_layers(network, logger)
    if calibrator is not None:
        warn_if_cache_misses_network(network, calibrator, logger)
    return serialize_network(builder, network, builder_config, config, logger)


def make_calibrator(
    args: argparse.Namespace, cache_file: str | None, config: BertConfig, weights: WeightMap, statistics: bool = False
) -> BertPackedCalibrator | PackedChannelStatistics:
    """The packed calibrator of the command line (``statistics``: the batches for activation
    smoothing's per-channel maxima instead), its batches as large as the first profile's, tokenizing
    with the model's tokenizer."""
    tokens = batch_profiles(args.max_batch_size, args.max_sequence_length)[0].tokens
    kind: type[BertPackedCalibrator | PackedChannelStatistics] = PackedChannelStatistics if statistics else BertPackedCalibrator
    calibrator = kind(
        args.squad_json, args.vocab_file, cache_file, tokens, args.max_sequence_length, args.calib_num, model_info(config, weights)
    )
    check_calibration_vocabulary(calibrator, weights, args.vocab_file)
    return calibrator


def calibration_build(
    args: argparse.Namespace,
    logger: trt.ILogger,
    config: BertConfig,
    weights: WeightMap,
    calibrator: BertPackedCalibrator | PackedChannelStatistics,
) -> None:
    """Run ``calibrator`` over an FP32 build of the network (float plugins) whose one profile is the
    calibrator's packed batch."""
    shape = PackedShape(calibrator.tokens, calibrator.max_sequences)
    with calibration_mode(config):
        build_engine(logger, config, weights, [shape], args.max_sequence_length, args.workspace_size, args.megatron,
                     False, calibrator)


def run(args: argparse.Namespace) -> None:
    backend, logger = start_backend(args)
    trt.init_libnvinfer_plugins(logger, "")

    check_options(args, backend)
    check_output_paths(args)
    config = load_config(args, logger)
    kind, path = weight_source(args)
    if backend == "tensorrt" and not (args.fp16 or args.int8):
        raise RuntimeError(TENSORRT_FP32_MESSAGE)
    weights = load_weights(kind, path, config, args.max_sequence_length)
    logger.log(trt.Logger.INFO, f"Found {len(weights)} entries in weight map")

    calibrator = None
    if config.use_int8 and not config.use_qat:
        weights, calibrator = post_training_calibration(
            args, logger, config, weights, default_calibration_cache_name(config, [args.max_sequence_length]),
            make_calibrator, calibration_build, pre_pass=True,
        )
    serialized = build_engine(
        logger,
        config,
        weights,
        batch_profiles(args.max_batch_size, args.max_sequence_length),
        args.max_sequence_length,
        args.workspace_size,
        args.megatron,
        args.verbose,
        calibrator,
    )
    save_engine(serialized, args.output, logger)


def main(argv: Sequence[str] | None = None) -> int:
    return run_builder(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
