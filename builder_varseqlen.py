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

Two network layouts:
* packed ``[T, E, 1, 1]`` (FP32/FP16, and INT8 without ``-il``);
* interleaved ``[1, E, T, 1]`` (``--int8 -il``; and ``--megatron``).  Its Q/K/V channels are ordered
  q block, k block, v block.  The original builds it only for INT8 (TensorRT's CHW32 INT8 kernels);
  the portable engine also runs it with float tensors, which is how Megatron runs in FP32/FP16 there.

``--megatron`` builds Megatron-BERT's residual stream: skip connections add *pre*-LayerNorm sums
(the embedding sum, then each skip-LayerNorm's second output).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from bert_weights import (
    BertConfig,
    WeightLoadError,
    WeightMap,
    check_weights,
    default_calibration_cache_name,
    load_megatron_pickle_weights,
    pack_qkv,
)
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
from builder import (
    add_dense,
    add_embedding_projection,
    add_plugin,
    amax,
    compute_capability,
    network_creation_flags,
    start_backend,
    warn_if_cache_misses_network,
)
from builder import LOADERS as FIXED_LENGTH_LOADERS
from builder_utils import (
    add_8bit_options,
    add_channel_scale,
    add_common_builder_options,
    add_gelu,
    check_8bit_options,
    check_output_paths,
    load_builder_config,
    load_timing_cache,
    model_info,
    name_network,
    parse_builder_args,
    plugin_field,
    post_training_calibration,
    run_builder,
    save_engine,
    serialize_network,
    set_output_range,
)
from helpers.backend import trt
from helpers.runner import WORD_EMBEDDINGS_FIELD
from helpers.smoothing import FC1_LAYER, HEAD_LAYER, QKV_LAYER, SKIP_SCALE, gelu_output_range
from helpers.sparsity import structured_layers

if TYPE_CHECKING:
    from helpers.calibrator import BertPackedCalibrator, PackedChannelStatistics

INPUT_NAMES = ("input_ids", "segment_ids", "cu_seqlens", "max_seqlen")
CHANNEL_AXIS = 1  # of both layouts, [T, E, 1, 1] and [1, E, T, 1]
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
    parser.add_argument(
        "-j", "--squad-json", default="squad/dev-v1.1.json", help="SQuAD file read by the INT8 calibrator (default: squad/dev-v1.1.json)"
    )
    parser.add_argument(
        "-v",
        "--vocab-file",
        default="./pre-trained_model/uncased_L-24_H-1024_A-16/vocab.txt",
        help="Vocabulary used by the INT8 calibrator (default: ./pre-trained_model/uncased_L-24_H-1024_A-16/vocab.txt)",
    )
    parser.add_argument(
        "-n",
        "--calib-num",
        default=100,
        type=int,
        help="Number of calibration questions (the first window of each, without padding), packed\n"
        "into batches of the first -b times -s tokens, or of all of them if they have fewer (default: 100)",
    )
    parser.add_argument("-p", "--calib-path", help="INT8 calibration cache file (default: None, a name derived from the model)")
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
    for kind in ("onnx", "pytorch", "ckpt", "pickle", "hf"):
        path = getattr(args, kind)
        if path is not None:
            return kind, path
    raise RuntimeError(NO_WEIGHTS_MESSAGE)


LOADERS = {**FIXED_LENGTH_LOADERS, "pickle": load_megatron_pickle_weights}


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
    weights = LOADERS[kind](path, config)
    check_weights(weights, config, max_sequence_length)
    if kind == "pickle" and not config.interleaved:
        per_head_qkv(weights, config)
    return weights


# ---------------------------------------------------------------------------------------------
# Network


class PackedShape(NamedTuple):
    """One optimization profile's largest batch: ``tokens`` tokens in up to ``sequences`` sequences."""

    tokens: int
    sequences: int


def batch_profiles(batch_sizes: Sequence[int], max_sequence_length: int) -> list[PackedShape]:
    """The profile of each -b: b sequences of up to S tokens (docs/SPEC.md "Variable-length network")."""
    return [PackedShape(max_sequence_length * b, b) for b in batch_sizes]


class VarSeqLenNetwork:
    """Adds the packed BERT network to a TensorRT network definition."""

    def __init__(
        self,
        network: trt.INetworkDefinition,
        config: BertConfig,
        weights: WeightMap,
        megatron: bool,
    ):
        self.network = network
        self.config = config
        self.weights = weights
        self.megatron = megatron
        self.interleaved = config.interleaved

    # ---- helpers ------------------------------------------------------------------------

    def amax(self, name: str) -> float:
        return amax(self.weights, name)

    def plugin(self, key: str, inputs: list[trt.ITensor], fields: list[trt.PluginField]) -> trt.ILayer:
        return add_plugin(self.network, key, inputs, fields, self.config)

    def transpose(self, tensor: trt.ITensor, order: tuple[int, ...]) -> trt.ITensor:
        shuffle = self.network.add_shuffle(tensor)
        shuffle.second_transpose = order
        return shuffle.get_output(0)

    def plugin_type_id(self) -> int:
        if self.config.use_int8 and not self.config.is_calib_mode:
            return int(trt.int8)
        return int(trt.float16 if self.config.use_fp16 else trt.float32)

    # ---- layers -------------------------------------------------------------------------

    def add_inputs(
        self, builder: trt.Builder, builder_config: trt.IBuilderConfig, profiles: Sequence[PackedShape], max_sequence_length: int
    ) -> list[trt.ITensor]:
        inputs = [self.network.add_input(name, trt.int32, (-1,)) for name in INPUT_NAMES]
        for shape in profiles:
            profile = builder.create_optimization_profile()
            tokens = (shape.tokens,)
            profile.set_shape("input_ids", (1,), tokens, tokens)
            profile.set_shape("segment_ids", (1,), tokens, tokens)
            profile.set_shape("cu_seqlens", (1,), (shape.sequences + 1,), (shape.sequences + 1,))
            profile.set_shape("max_seqlen", (1,), (max_sequence_length,), (max_sequence_length,))
            builder_config.add_optimization_profile(profile)
        return inputs

    def add_embeddings(self, inputs: list[trt.ITensor]) -> trt.ILayer:
        config = self.config
        fields = [plugin_field(name, self.weights[name], "float32") for name in EMBEDDING_NAMES]
        half = config.use_fp16 or (config.use_int8 and not config.is_calib_mode)
        fields.append(plugin_field("output_fp16", 1 if half else 0, "int32"))
        key = "emb_layer_norm_megatron" if self.megatron else "emb_layer_norm_huggingface"
        layer = self.plugin(key, inputs, fields)
        if config.use_int8 and config.use_qat:
            set_output_range(layer, self.amax("l0_attention_self_query_input_amax"))
            if self.megatron:
                set_output_range(layer, self.amax("l0_attention_output_add_residual_input_quantizer_amax"), index=1)
        layer.get_output(0).name = "embeddings_output"
        return layer

    def add_attention(
        self, prefix: str, x: trt.ITensor, mask_idx: trt.ITensor | None, cu_seqlens: trt.ITensor, max_seqlen: trt.ITensor
    ) -> trt.ILayer:
        config = self.config
        hidden = config.hidden_size
        qkv = add_dense(self.network, x, 3 * hidden, self.weights[prefix + WQKV], self.weights[prefix + BQKV])
        qkv.name = prefix + QKV_LAYER
        if config.use_qat:
            names = ("qv_a", "qv_b", "av_b")
            set_output_range(qkv, max(self.amax(f"{prefix}attention_self_{n}_input_quantizer_amax") for n in names))
        qkv.get_output(0).name = prefix + "attention_qkv_mult"

        fields = [plugin_field("hidden_size", hidden, "int32"), plugin_field("num_heads", config.num_attention_heads, "int32")]
        if config.use_qat:
            dq_probs = self.amax(prefix + "attention_self_av_a_input_quantizer_amax") / 127.0
            fields.append(plugin_field("dq_probs", dq_probs, "float32"))
        if self.interleaved:
            context = self.plugin("qkv_to_context_interleaved", [qkv.get_output(0), cu_seqlens, max_seqlen], fields)
        else:
            assert mask_idx is not None
            fields.append(plugin_field("has_mask", 1, "int32"))
            fields.append(plugin_field("type_id", self.plugin_type_id(), "int32"))
            # As in the original: an int32 value tagged FLOAT32; the plugin reads the raw int32.
            fields.append(trt.PluginField("var_seqlen", np.array([1], dtype=np.int32), trt.PluginFieldType.FLOAT32))
            context = self.plugin(
                "qkv_to_context_varseqlen", [qkv.get_output(0), mask_idx, cu_seqlens, max_seqlen], fields
            )
        context.name = prefix + "attention_qkv_to_ctx"
        if config.use_qat:
            set_output_range(context, self.amax(prefix + "attention_output_dense_input_amax"))
        context.get_output(0).name = prefix + "attention_context_layer"
        return context

    def add_skip_layernorm(self, prefix: str, x: trt.ITensor, skip: trt.ITensor, pre_ln_output: bool) -> trt.ILayer:
        """Skip + LayerNorm; ``pre_ln_output`` asks for the Megatron version (second output: the sum)."""
        beta = plugin_field("beta", self.weights[prefix + "beta"], "float32")
        gamma = plugin_field("gamma", self.weights[prefix + "gamma"], "float32")
        # With activation smoothing the skip (a smoothed LayerNorm output) is scaled back first.
        skip = add_channel_scale(self.network, skip, self.weights.get(prefix + SKIP_SCALE), CHANNEL_AXIS, prefix + "skip")
        if self.interleaved:
            key = "skip_layer_norm_megatron" if pre_ln_output else "skip_layer_norm_huggingface"
            return self.plugin(key, [x, skip], [beta, gamma])
        # v2 does not declare "ld"; the original sends it anyway.
        fields = [
            plugin_field("ld", self.config.hidden_size, "int32"),
            beta,
            gamma,
            plugin_field("type_id", self.plugin_type_id(), "int32"),
        ]
        return self.plugin("skip_layer_norm_varseqlen", [x, skip], fields)

    def add_transformer_layer(
        self,
        index: int,
        x: trt.ITensor,
        residual: trt.ITensor | None,
        mask_idx: trt.ITensor | None,
        cu_seqlens: trt.ITensor,
        max_seqlen: trt.ITensor,
    ) -> trt.ILayer:
        config, weights, network = self.config, self.weights, self.network
        prefix = f"l{index}_"
        hidden = config.hidden_size
        last = index == config.num_hidden_layers - 1
        if config.use_qat:
            query = self.amax(prefix + "attention_self_query_input_amax")
            for projection in ("key", "value"):
                other = self.amax(f"{prefix}attention_self_{projection}_input_amax")
                if other != query:
                    raise WeightLoadError(
                        f"{prefix}attention_self_{projection}_input_amax ({other}) differs from "
                        f"{prefix}attention_self_query_input_amax ({query}); the fused QKV needs one input range"
                    )
            x.set_dynamic_range(-query, query)

        context = self.add_attention(prefix, x, mask_idx, cu_seqlens, max_seqlen)
        attention_dense = add_dense(network, context.get_output(0), hidden, weights[prefix + W_AOUT], weights[prefix + B_AOUT])
        attention_dense.name = prefix + "attention_output_dense"
        if config.use_int8 and config.use_qat:
            set_output_range(attention_dense, self.amax(prefix + "attention_output_add_local_input_quantizer_amax"))

        if self.megatron:
            assert residual is not None
            if config.use_qat:
                amax_residual = self.amax(prefix + "attention_output_add_residual_input_quantizer_amax")
                residual.set_dynamic_range(-amax_residual, amax_residual)
            skip = residual
        else:
            skip = x
        attention_ln = self.add_skip_layernorm(
            prefix + "attention_output_layernorm_", attention_dense.get_output(0), skip, pre_ln_output=self.megatron
        )
        if config.use_qat:
            set_output_range(attention_ln, self.amax(prefix + "intermediate_dense_input_amax"))

        intermediate = add_dense(
            network, attention_ln.get_output(0), config.intermediate_size, weights[prefix + W_MID], weights[prefix + B_MID]
        )
        intermediate.name = prefix + FC1_LAYER
        # The FP32-pinned tanh chain is what TensorRT fuses with the dense layer; GELU_ERF is one layer.
        gelu = add_gelu(network, intermediate.get_output(0), force_fp32=config.gelu == "tanh", form=config.gelu)
        gelu.get_output(0).name = prefix + "gelu"
        if config.use_int8 and config.use_qat:
            set_output_range(gelu, self.amax(prefix + "output_dense_input_amax"))
        elif config.use_int8:
            set_output_range(gelu, gelu_output_range(weights, prefix))  # as builder.py's post-training calibration

        output_dense = add_dense(network, gelu.get_output(0), hidden, weights[prefix + W_LOUT], weights[prefix + B_LOUT])
        output_dense.name = prefix + "output_dense"
        if config.use_int8 and config.use_qat:
            set_output_range(output_dense, self.amax(prefix + "output_add_local_input_quantizer_amax"))
        output_dense.get_output(0).name = prefix + "output_dense"

        if self.megatron:
            if config.use_qat:
                set_output_range(attention_ln, self.amax(prefix + "output_add_residual_input_quantizer_amax"), index=1)
            skip = attention_ln.get_output(1)
        else:
            skip = attention_ln.get_output(0)
        output_ln = self.add_skip_layernorm(
            prefix + "output_layernorm_", output_dense.get_output(0), skip, pre_ln_output=self.megatron and not last
        )
        output_ln.get_output(0).name = prefix + "output_reshape"
        return output_ln

    def add_squad_head(self, x: trt.ITensor) -> trt.ITensor:
        logits = add_dense(self.network, x, 2, self.weights["cls_" + SQD_W], self.weights["cls_" + SQD_B])
        logits.name = HEAD_LAYER
        # [T, 2, 1, 1] or interleaved [1, 2, T, 1] -> [2, T, 1, 1]
        order = (1, 2, 0, 3) if self.interleaved else (1, 0, 2, 3)
        output = self.transpose(logits.get_output(0), order)
        output.name = "logits_out"
        self.network.mark_output(output)
        return output

    def populate(
        self, builder: trt.Builder, builder_config: trt.IBuilderConfig, profiles: Sequence[PackedShape], max_sequence_length: int
    ) -> None:
        name_network(self.network, self.config, self.weights)
        inputs = self.add_inputs(builder, builder_config, profiles, max_sequence_length)
        cu_seqlens, max_seqlen = inputs[2], inputs[3]
        embeddings = self.add_embeddings(inputs)
        x = add_embedding_projection(self.network, self.config, self.weights, embeddings.get_output(0))
        mask_idx: trt.ITensor | None = None
        residual: trt.ITensor | None = None
        if self.interleaved:
            # [T, E, 1, 1] -> [1, E, T, 1]
            x = self.transpose(x, (2, 1, 0, 3))
        else:
            mask_idx = embeddings.get_output(1)
        if self.megatron:
            # Layer 0 sets its dynamic range (l0_attention_output_add_residual_input_quantizer_amax).
            residual = self.transpose(embeddings.get_output(1), (2, 1, 0, 3))
        for index in range(self.config.num_hidden_layers):
            layer = self.add_transformer_layer(index, x, residual, mask_idx, cu_seqlens, max_seqlen)
            x = layer.get_output(0)
            if self.megatron and index != self.config.num_hidden_layers - 1:
                residual = layer.get_output(1)
        if self.config.use_qat:
            set_output_range(layer, self.amax("bert_encoder_final_input_quantizer_amax"))
        self.add_squad_head(x)


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
    if config.use_int8:
        builder_config.set_flag(trt.BuilderFlag.INT8)
        if calibrator is not None:
            builder_config.set_quantization_flag(trt.QuantizationFlag.CALIBRATE_BEFORE_FUSION)
            builder_config.int8_calibrator = calibrator
        if config.use_fp8:
            builder_config.set_flag(trt.BuilderFlag.FP8)
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
    with the model's tokenizer; a vocabulary with ids past the model's word embedding table is
    refused when a calibration will read it."""
    from helpers.calibrator import BertPackedCalibrator, PackedChannelStatistics

    tokens = batch_profiles(args.max_batch_size, args.max_sequence_length)[0].tokens
    kind: type[BertPackedCalibrator | PackedChannelStatistics] = PackedChannelStatistics if statistics else BertPackedCalibrator
    calibrator = kind(
        args.squad_json, args.vocab_file, cache_file, tokens, args.max_sequence_length, args.calib_num, model_info(config, weights)
    )
    if calibrator.tokenizer is not None:
        calibrator.tokenizer.check_embedding_rows(weights[WORD_EMBEDDINGS_FIELD].shape[0], args.vocab_file)
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
    saved_fp16 = config.use_fp16
    config.use_fp16, config.is_calib_mode = False, True
    shape = PackedShape(calibrator.tokens, calibrator.max_sequences)
    try:
        build_engine(logger, config, weights, [shape], args.max_sequence_length, args.workspace_size, args.megatron,
                     False, calibrator)
    finally:
        config.use_fp16, config.is_calib_mode = saved_fp16, False


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
