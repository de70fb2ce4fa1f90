#!/usr/bin/env python3
"""Build a fixed-sequence-length BERT SQuAD engine (padded inputs + mask) with TensorRT.

The network is written once against the TensorRT Python API; ``--backend`` picks the real
``tensorrt`` module or the portable engine (``helpers.portable``) that implements the same API on
PyTorch.  Weights come from a TF checkpoint, an ONNX QAT model, a PyTorch checkpoint or a
HuggingFace folder (docs/SPEC.md "builder.py options", "Fixed-length network").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bert_weights import BertConfig, WeightMap, check_weights, default_calibration_cache_name
from bert_weights.names import (
    B_AOUT,
    B_LOUT,
    B_MID,
    BQKV,
    EMBEDDING_NAMES,
    SQD_B,
    SQD_W,
    W_AOUT,
    W_LOUT,
    W_MID,
    WQKV,
)
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
    add_channel_scale,
    add_common_builder_options,
    add_dense,
    add_embedding_projection,
    add_gelu,
    add_plugin,
    amax,
    check_output_paths,
    compute_capability,
    first_weight_source,
    load_builder_config,
    load_timing_cache,
    model_info,
    name_network,
    network_creation_flags,
    parse_builder_args,
    plugin_field,
    run_builder,
    save_engine,
    serialize_network,
    set_output_range,
    set_qkv_input_range,
    start_backend,
)
from helpers.backend import trt
from helpers.calibrator import BertCalibrator, BertChannelStatistics
from helpers.runner import load_plugin_library
from helpers.smoothing import FC1_LAYER, HEAD_LAYER, QKV_LAYER, SKIP_SCALE, gelu_output_range

INPUT_NAMES = ("input_ids", "segment_ids", "input_mask")
CHANNEL_AXIS = 2  # of the network's [S, B, E, 1, 1] activations
NO_WEIGHTS_MESSAGE = (
    "You need either specify TF checkpoint using option --ckpt or ONNX using option --onnx to build TRT BERT model."
)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="TensorRT BERT Sample", formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("-m", "--ckpt", help="TensorFlow checkpoint prefix, e.g. model.ckpt for model.ckpt.index (default: None)")
    parser.add_argument("-x", "--onnx", help="ONNX model with fake-quantization (QAT) nodes (default: None)")
    parser.add_argument("-pt", "--pytorch", help='PyTorch checkpoint holding {"model": state_dict} (default: None)')
    parser.add_argument(
        "-o", "--output", required=True, default="bert_base_384.engine", help="Engine file to write (default: bert_base_384.engine)"
    )
    parser.add_argument(
        "-b",
        "--batch-size",
        default=[],
        action="append",
        type=int,
        help="Batch size to optimize for; repeat the option for several (one optimization profile each).\n"
        "The engine accepts any batch size from 1 up to it. (default: [1])",
    )
    parser.add_argument(
        "-s",
        "--sequence-length",
        default=[],
        action="append",
        type=int,
        help="Sequence length; repeat the option for several (default: [128])",
    )
    parser.add_argument(
        "-c",
        "--config-dir",
        help="Folder holding bert_config.json (num_attention_heads, hidden_size, intermediate_size,\n"
        "num_hidden_layers); required unless --hf is given (default: None)",
    )
    parser.add_argument("-f", "--fp16", action="store_true", help="Allow FP16 kernels and FP16 plugin I/O (default: false)")
    parser.add_argument("-i", "--int8", action="store_true", help="Allow INT8 kernels (default: false)")
    parser.add_argument("-t", "--strict", action="store_true", help="Make TensorRT obey the requested layer precisions (default: false)")
    parser.add_argument("-w", "--workspace-size", default=2500, type=int, help="Workspace memory limit in MiB (default: 2500)")
    add_calibration_options(parser, "Number of calibration batches (default: 100)")
    parser.add_argument(
        "-g", "--force-fc2-gemm", action="store_true", help="Kept for compatibility; has no effect since TensorRT 10.6 (default: false)"
    )
    parser.add_argument(
        "-iln", "--force-int8-skipln", action="store_true", help="Run skip-LayerNorm with INT8 input and output (default: false)"
    )
    parser.add_argument(
        "-imh", "--force-int8-multihead", action="store_true", help="Run multi-head attention with INT8 input and output (default: false)"
    )
    parser.add_argument("-sp", "--sparse", action="store_true", help="Let TensorRT use structured-sparsity kernels (default: false)")
    add_8bit_options(parser)
    parser.add_argument("-tcf", "--timing-cache-file", help="Timing cache to read before and write after the build (default: None)")
    parser.add_argument(
        "--distributive_independence",
        action="store_true",
        help="Set TensorRT's DISTRIBUTIVE_INDEPENDENCE flag; builds a single profile (default: false)",
    )
    add_common_builder_options(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_builder_args(parser, argv)
    args.batch_size = args.batch_size or [1]
    args.sequence_length = args.sequence_length or [128]
    for name, values in (("batch size", args.batch_size), ("sequence length", args.sequence_length)):
        if min(values) < 1:
            parser.error(f"{name} must be positive, got {min(values)}")
    if args.calib_num < 1:
        parser.error(f"-n/--calib-num must be positive, got {args.calib_num}")
    return args


# ---------------------------------------------------------------------------------------------
# Environment checks


def check_int8_options(args: argparse.Namespace, backend: str) -> None:
    check_8bit_options(args, backend, qat=args.onnx is not None)
    if not (args.force_int8_multihead or args.force_int8_skipln):
        return
    capability = compute_capability(backend)
    if capability < 75 and args.force_int8_multihead:
        raise RuntimeError("--force-int8-multihead option is only supported on Turing+ GPU.")
    if capability < 72 and args.force_int8_skipln:
        raise RuntimeError("--force-int8-skipln option is only supported on Xavier+ GPU.")


# ---------------------------------------------------------------------------------------------
# Network


def profile_shapes(
    batch_sizes: Sequence[int], sequence_lengths: Sequence[int], distributive_independence: bool
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(min, opt=max) input shape of every optimization profile, in the order they are added
    (docs/SPEC.md "Inputs and profiles")."""
    if distributive_independence:
        return [((1, max(sequence_lengths)), (max(batch_sizes), max(sequence_lengths)))]
    if len(batch_sizes) == 1 and len(sequence_lengths) == 1:
        return []
    return [((1, s), (b, s)) for b in sorted(batch_sizes) for s in sorted(sequence_lengths)]


def add_inputs(
    builder: trt.Builder,
    network: trt.INetworkDefinition,
    builder_config: trt.IBuilderConfig,
    config: BertConfig,
    batch_sizes: Sequence[int],
    sequence_lengths: Sequence[int],
) -> list[trt.ITensor]:
    profiles = profile_shapes(batch_sizes, sequence_lengths, config.distributive_independence)
    # Profiles start at batch 1.  The original keeps a single batch size static even then, which
    # TensorRT rejects for sizes above 1 (e.g. -b 4 -s 128 -s 384): such an axis is dynamic here.
    dynamic_batch = any(low[0] != high[0] for low, high in profiles)
    shape = (-1 if dynamic_batch else batch_sizes[0], -1 if len(sequence_lengths) > 1 else sequence_lengths[0])
    inputs = [network.add_input(name, trt.int32, shape) for name in INPUT_NAMES]
    for min_shape, max_shape in profiles:
        profile = builder.create_optimization_profile()
        for name in INPUT_NAMES:
            profile.set_shape(name, min_shape, max_shape, max_shape)
        builder_config.add_optimization_profile(profile)
    return inputs


def mha_type_id(config: BertConfig) -> int:
    if config.use_int8 and config.use_int8_multihead and not config.is_calib_mode:
        return int(trt.int8)
    return int(trt.float16 if config.use_fp16 else trt.float32)


def skipln_type_id(config: BertConfig) -> int:
    if config.use_int8 and config.use_int8_skipln and not config.is_calib_mode:
        return int(trt.int8)
    return int(trt.float16 if config.use_fp16 else trt.float32)


def add_embeddings(
    network: trt.INetworkDefinition, config: BertConfig, weights: WeightMap, inputs: list[trt.ITensor]
) -> trt.ILayer:
    sequence_major = []
    for tensor in inputs:
        shuffle = network.add_shuffle(tensor)
        shuffle.second_transpose = (1, 0)
        sequence_major.append(shuffle.get_output(0))
    fields = [plugin_field(name, weights[name], "float32") for name in EMBEDDING_NAMES]
    fields.append(plugin_field("output_fp16", 1 if config.use_fp16 else 0, "int32"))
    fields.append(plugin_field("mha_type_id", mha_type_id(config), "int32"))
    layer = add_plugin(network, "emb_layer_norm", sequence_major, fields, config)
    if config.use_qat:
        set_output_range(layer, 1.0, index=1)
    layer.get_output(0).name = "embeddings_output"
    return layer


def add_attention(
    prefix: str,
    network: trt.INetworkDefinition,
    config: BertConfig,
    weights: WeightMap,
    x: trt.ITensor,
    mask_index: trt.ITensor,
) -> trt.ILayer:
    hidden = config.hidden_size
    qkv = add_dense(network, x, 3 * hidden, weights[prefix + WQKV], weights[prefix + BQKV])
    qkv.name = prefix + QKV_LAYER
    if config.use_qat:
        names = ("attention_self_qv_a_input_quantizer_amax", "attention_self_qv_b_input_quantizer_amax",
                 "attention_self_av_b_input_quantizer_amax")
        set_output_range(qkv, max(amax(weights, prefix + name) for name in names))
    qkv.get_output(0).name = prefix + "attention_qkv_mult"
    fields = [
        plugin_field("hidden_size", hidden, "int32"),
        plugin_field("num_heads", config.num_attention_heads, "int32"),
        plugin_field("has_mask", 1, "int32"),
        plugin_field("type_id", mha_type_id(config), "int32"),
    ]
    if config.use_qat:
        probabilities = amax(weights, prefix + "attention_self_av_a_input_quantizer_amax")
        fields.append(plugin_field("dq_probs", probabilities / 127.0, "float32"))
    context = add_plugin(network, "qkv_to_context", [qkv.get_output(0), mask_index], fields, config)
    if config.use_qat:
        set_output_range(context, amax(weights, prefix + "attention_output_dense_input_amax"))
    context.get_output(0).name = prefix + "attention_context_layer"
    return context


def add_skip_layernorm(
    prefix: str,
    network: trt.INetworkDefinition,
    config: BertConfig,
    weights: WeightMap,
    x: trt.ITensor,
    skip: trt.ITensor,
) -> trt.ILayer:
    fields = [
        plugin_field("ld", config.hidden_size, "int32"),
        plugin_field("beta", weights[prefix + "beta"], "float32"),
        plugin_field("gamma", weights[prefix + "gamma"], "float32"),
        plugin_field("type_id", skipln_type_id(config), "int32"),
    ]
    # With activation smoothing the skip (a smoothed LayerNorm output) is scaled back first.
    skip = add_channel_scale(network, skip, weights.get(prefix + SKIP_SCALE), CHANNEL_AXIS, prefix + "skip")
    return add_plugin(network, "skip_layer_norm", [x, skip], fields, config)


def add_transformer_layer(
    layer_index: int,
    network: trt.INetworkDefinition,
    config: BertConfig,
    weights: WeightMap,
    x: trt.ITensor,
    mask_index: trt.ITensor,
) -> trt.ILayer:
    prefix = f"l{layer_index}_"
    hidden = config.hidden_size
    # Without INT8 skip-LN, the dense layers feeding it must not hand it INT8 data.
    unquantized = trt.DataType.HALF if config.use_fp16 else trt.DataType.FLOAT
    if config.use_qat:
        set_qkv_input_range(weights, prefix, x)

    context = add_attention(prefix, network, config, weights, x, mask_index)
    attention_dense = add_dense(network, context.get_output(0), hidden, weights[prefix + W_AOUT], weights[prefix + B_AOUT])
    if config.use_int8 and not config.use_int8_skipln:
        attention_dense.set_output_type(0, unquantized)
    if config.use_qat:
        set_output_range(attention_dense, amax(weights, prefix + "attention_output_add_local_input_quantizer_amax"))
    attention_ln = add_skip_layernorm(
        prefix + "attention_output_layernorm_", network, config, weights, attention_dense.get_output(0), x
    )
    if config.use_qat:
        set_output_range(attention_ln, amax(weights, prefix + "intermediate_dense_input_amax"))

    intermediate = add_dense(
        network, attention_ln.get_output(0), config.intermediate_size, weights[prefix + W_MID], weights[prefix + B_MID]
    )
    intermediate.name = prefix + FC1_LAYER
    gelu = add_gelu(network, intermediate.get_output(0), form=config.gelu)
    gelu.get_output(0).name = prefix + "gelu"
    if config.use_qat:
        set_output_range(gelu, amax(weights, prefix + "output_dense_input_amax"))
    elif config.use_int8:
        set_output_range(gelu, gelu_output_range(weights, prefix))  # "GELU10", or the smoothed build's

    output_dense = add_dense(network, gelu.get_output(0), hidden, weights[prefix + W_LOUT], weights[prefix + B_LOUT])
    if config.use_int8 and not config.use_int8_skipln:
        output_dense.set_output_type(0, unquantized)
    if config.use_qat:
        set_output_range(output_dense, amax(weights, prefix + "output_add_local_input_quantizer_amax"))
    output_dense.get_output(0).name = prefix + "output_dense"

    output_ln = add_skip_layernorm(
        prefix + "output_layernorm_", network, config, weights, output_dense.get_output(0), attention_ln.get_output(0)
    )
    output_ln.get_output(0).name = prefix + "output_reshape"
    return output_ln


def populate_network(
    builder: trt.Builder,
    network: trt.INetworkDefinition,
    builder_config: trt.IBuilderConfig,
    config: BertConfig,
    weights: WeightMap,
    batch_sizes: Sequence[int],
    sequence_lengths: Sequence[int],
) -> None:
    name_network(network, config, weights)
    inputs = add_inputs(builder, network, builder_config, config, batch_sizes, sequence_lengths)
    embeddings = add_embeddings(network, config, weights, inputs)
    x = add_embedding_projection(network, config, weights, embeddings.get_output(0))
    mask_index = embeddings.get_output(1)
    for layer_index in range(config.num_hidden_layers):
        layer = add_transformer_layer(layer_index, network, config, weights, x, mask_index)
        x = layer.get_output(0)
    if config.use_qat:
        set_output_range(layer, amax(weights, "bert_encoder_final_input_quantizer_amax"))

    logits = add_dense(network, x, 2, weights["cls_" + SQD_W], weights["cls_" + SQD_B])
    logits.name = HEAD_LAYER
    batch_major = network.add_shuffle(logits.get_output(0))
    batch_major.second_transpose = (1, 0, 2, 3, 4)
    output = batch_major.get_output(0)
    output.name = "logits_out"
    network.mark_output(output)


# ---------------------------------------------------------------------------------------------
# Build


def configure_builder(
    builder_config: trt.IBuilderConfig,
    config: BertConfig,
    workspace_size: int,
    verbose: bool,
    logger: trt.ILogger,
    calibrator: trt.IInt8Calibrator | None,
) -> None:
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_size * 1024 * 1024)
    builder_config.avg_timing_iterations = 8
    tactics = builder_config.get_tactic_sources() | 1 << int(trt.TacticSource.CUBLAS)
    builder_config.set_tactic_sources(tactics & ~(1 << int(trt.TacticSource.CUDNN)))
    if config.use_fp16:
        builder_config.set_flag(trt.BuilderFlag.FP16)
    set_8bit_flags(builder_config, config, calibrator)
    if config.use_strict:
        builder_config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        builder_config.set_flag(trt.BuilderFlag.DIRECT_IO)
        builder_config.set_flag(trt.BuilderFlag.REJECT_EMPTY_ALGORITHMS)
    if verbose:
        builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if config.distributive_independence:
        builder_config.set_flag(trt.BuilderFlag.DISTRIBUTIVE_INDEPENDENCE)
    if config.use_sparsity:
        logger.log(trt.Logger.INFO, "Setting sparsity flag on builder_config.")
        builder_config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if config.timing_cache is not None:
        load_timing_cache(builder_config, config.timing_cache, logger)


def build_engine(
    logger: trt.ILogger,
    config: BertConfig,
    weights: WeightMap,
    batch_sizes: Sequence[int],
    sequence_lengths: Sequence[int],
    workspace_size: int,
    verbose: bool = False,
    calibrator: trt.IInt8Calibrator | None = None,
) -> trt.IHostMemory:
    """Build and serialize the engine; saves the timing cache when one was asked for."""
    if config.is_calib_mode:
        sequence_lengths = sequence_lengths[-1:]
    builder = trt.Builder(logger)
    network = builder.create_network(network_creation_flags())
    builder_config = builder.create_builder_config()
    configure_builder(builder_config, config, workspace_size, verbose, logger, calibrator)
    populate_network(builder, network, builder_config, config, weights, batch_sizes, sequence_lengths)
    if calibrator is not None:
        warn_if_cache_misses_network(network, calibrator, logger)
    return serialize_network(builder, network, builder_config, config, logger)


def make_calibrator(
    args: argparse.Namespace, cache_file: str | None, config: BertConfig, weights: WeightMap, statistics: bool = False
) -> trt.IInt8Calibrator:
    """The calibrator of the command line, one window of the last -s per batch (``statistics``: the
    batches for activation smoothing's per-channel maxima instead), tokenizing with the model's
    tokenizer (-v: a vocab.txt, a tokenizer.json or the checkpoint folder)."""
    kind = BertChannelStatistics if statistics else BertCalibrator
    calibrator = kind(
        args.squad_json, args.vocab_file, cache_file, 1, args.sequence_length[-1], args.calib_num, model_info(config, weights)
    )
    check_calibration_vocabulary(calibrator, weights, args.vocab_file)
    return calibrator


def calibration_build(
    args: argparse.Namespace, logger: trt.ILogger, config: BertConfig, weights: WeightMap, calibrator: trt.IInt8Calibrator
) -> None:
    """Run ``calibrator`` over an FP32, static-shape build: batch 1, the last -s (docs/SPEC.md "Calibration")."""
    with calibration_mode(config):
        build_engine(logger, config, weights, [1], args.sequence_length, args.workspace_size, False, calibrator)


def weight_source(args: argparse.Namespace) -> tuple[str, str]:
    """(kind, path) of the weights to use: onnx > pytorch > ckpt > hf."""
    return first_weight_source(args, ("onnx", "pytorch", "ckpt", "hf"), NO_WEIGHTS_MESSAGE)


def load_config(args: argparse.Namespace, logger: trt.ILogger) -> BertConfig:
    options = dict(
        use_fp16=args.fp16,
        use_int8=args.int8,
        use_strict=args.strict,
        use_fc2_gemm=args.force_fc2_gemm,
        use_int8_skipln=args.force_int8_skipln,
        use_int8_multihead=args.force_int8_multihead,
        use_qat=args.int8 and args.onnx is not None,
        use_sparsity=args.sparse,
        use_fp8=args.fp8,
        timing_cache=args.timing_cache_file,
        distributive_independence=args.distributive_independence,
        use_deprecated_plugins=args.use_deprecated_plugins,
    )
    return load_builder_config(args, logger, **options)


def run(args: argparse.Namespace) -> None:
    backend, logger = start_backend(args)
    if backend == "tensorrt":
        load_plugin_library()
    trt.init_libnvinfer_plugins(logger, "")

    check_int8_options(args, backend)
    kind, path = weight_source(args)
    check_output_paths(args)
    config = load_config(args, logger)
    weights = WEIGHT_LOADERS[kind](path, config)
    logger.log(trt.Logger.INFO, f"Found {len(weights)} entries in weight map")
    check_weights(weights, config, max(args.sequence_length))

    calibrator = None
    if config.use_int8 and not config.use_qat:
        # Like the original, a PyTorch checkpoint skips the FP32 calibration pre-pass.
        weights, calibrator = post_training_calibration(
            args, logger, config, weights, default_calibration_cache_name(config, args.sequence_length),
            make_calibrator, calibration_build, pre_pass=kind in ("ckpt", "hf"),
        )
    serialized = build_engine(
        logger, config, weights, args.batch_size, args.sequence_length, args.workspace_size, args.verbose, calibrator
    )
    save_engine(serialized, args.output, logger)


def main(argv: Sequence[str] | None = None) -> int:
    return run_builder(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
