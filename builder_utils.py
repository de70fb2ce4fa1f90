"""Plugin, network, backend, file and command-line helpers shared by the BERT engine builders
(their 8-bit side is ``builder_calibration``).

The model configuration and weights they build from are ``bert_weights``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

import numpy as np
import torch

from bert_weights import (
    BertConfig,
    WeightLoadError,
    WeightMap,
    bert_config_path,
    first_line,
    load_bert_config,
    load_hf_config,
    load_hf_weights,
    load_megatron_pickle_weights,
    load_onnx_weights_and_quant,
    load_pytorch_weights_and_quant,
    load_tf_weights,
)
from bert_weights.names import EMB_PROJ_B, EMB_PROJ_W
from helpers.backend import BACKENDS, BackendError, backend_name, select_backend, trt
from helpers.cli import exit_on_interrupt, parse_known_options
from helpers.files import CACHE_FILE_MAX_BYTES, check_output_path, read_limited
from helpers.files import write_bytes_atomically as write_file_atomically
from helpers.model_info import ModelInfo
from helpers.runner import portable_device

# The portable engine's device; the builders' --device sets it.
DEVICE_ENV = "DEMOBERT_DEVICE"


# ---------------------------------------------------------------------------------------------
# Plugins


class PluginInfo(NamedTuple):
    trt_plugin_name: str
    v2_version: str
    v3_version: str


BERT_PLUGINS_INFO_MAP: dict[str, PluginInfo] = {
    "qkv_to_context": PluginInfo("CustomQKVToContextPluginDynamic", "1", "4"),
    "qkv_to_context_varseqlen": PluginInfo("CustomQKVToContextPluginDynamic", "2", "5"),
    "qkv_to_context_interleaved": PluginInfo("CustomQKVToContextPluginDynamic", "3", "6"),
    "skip_layer_norm": PluginInfo("CustomSkipLayerNormPluginDynamic", "1", "5"),
    "skip_layer_norm_varseqlen": PluginInfo("CustomSkipLayerNormPluginDynamic", "2", "6"),
    "skip_layer_norm_huggingface": PluginInfo("CustomSkipLayerNormPluginDynamic", "3", "7"),
    "skip_layer_norm_megatron": PluginInfo("CustomSkipLayerNormPluginDynamic", "4", "8"),
    "emb_layer_norm": PluginInfo("CustomEmbLayerNormPluginDynamic", "1", "6"),
    "emb_layer_norm_huggingface": PluginInfo("CustomEmbLayerNormPluginDynamic", "2", "4"),
    "emb_layer_norm_megatron": PluginInfo("CustomEmbLayerNormPluginDynamic", "3", "5"),
}


def plugin_field(name: str, values: np.ndarray | Sequence[float] | Sequence[int] | float | int, kind: str) -> trt.PluginField:
    """A PluginField over a contiguous 1-D array; ``kind`` is ``"float32"`` or ``"int32"``."""
    if kind == "float32":
        array = np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(-1))
        return trt.PluginField(name, array, trt.PluginFieldType.FLOAT32)
    if kind == "int32":
        array = np.ascontiguousarray(np.asarray(values, dtype=np.int32).reshape(-1))
        return trt.PluginField(name, array, trt.PluginFieldType.INT32)
    raise ValueError(f"unsupported plugin field kind {kind!r}")


def create_plugin(
    key: str,
    plugin_registry: trt.IPluginRegistry,
    fields: list[trt.PluginField],
    use_deprecated_plugins: bool = True,
) -> trt.IPluginV2 | trt.IPluginV3:
    """Create plugin ``key`` of BERT_PLUGINS_INFO_MAP: its IPluginV2 version, or IPluginV3 version."""
    info = BERT_PLUGINS_INFO_MAP[key]
    version = info.v2_version if use_deprecated_plugins else info.v3_version
    creator = plugin_registry.get_creator(info.trt_plugin_name, version, "")
    if creator is None:
        raise RuntimeError(
            f"plugin {info.trt_plugin_name} version {version} is not registered "
            "(is the TensorRT plugin library loaded?)"
        )
    collection = trt.PluginFieldCollection(fields)
    if use_deprecated_plugins:
        return cast("trt.IPluginV2", creator.create_plugin(key, collection))
    return cast("trt.IPluginV3", creator.create_plugin(key, collection, trt.TensorRTPhase.BUILD))


def add_plugin_to_network(
    network: trt.INetworkDefinition,
    plugin: trt.IPluginV2 | trt.IPluginV3,
    inputs: list[trt.ITensor],
    use_deprecated_plugins: bool = True,
) -> trt.ILayer:
    if use_deprecated_plugins:
        return network.add_plugin_v2(inputs, cast("trt.IPluginV2", plugin))
    return network.add_plugin_v3(inputs, [], cast("trt.IPluginV3", plugin))


# ---------------------------------------------------------------------------------------------
# Network helpers shared by the builders


def add_gelu(
    network: trt.INetworkDefinition, x: trt.ITensor, force_fp32: bool = False, form: str = "tanh"
) -> trt.ILayer:
    """GELU of the model's form (BertConfig.gelu).

    ``tanh``: the approximation 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) from elementwise layers,
    constants of shape (1,)*rank of ``x`` so they broadcast.  ``force_fp32`` pins every layer to
    FLOAT, which lets TensorRT fuse FC+GELU in the varseqlen builder.
    ``erf``: the exact x·Φ(x) (HuggingFace's "gelu"), one GELU_ERF activation layer.
    """
    if form == "erf":
        return network.add_activation(x, trt.ActivationType.GELU_ERF)
    rank = len(x.shape)
    layers: list[trt.ILayer] = []

    def constant(value: float) -> trt.ITensor:
        layer = network.add_constant((1,) * rank, trt.Weights(np.array([value], dtype=np.float32)))
        layers.append(layer)
        return layer.get_output(0)

    def elementwise(a: trt.ITensor, b: trt.ITensor, op: trt.ElementWiseOperation) -> trt.ITensor:
        layer = network.add_elementwise(a, b, op)
        layers.append(layer)
        return layer.get_output(0)

    ops = trt.ElementWiseOperation
    cube = elementwise(x, constant(3.0), ops.POW)
    inner = elementwise(x, elementwise(cube, constant(0.044715), ops.PROD), ops.SUM)
    scaled = elementwise(inner, constant(0.79788456080286535587989211986876), ops.PROD)
    tanh = network.add_activation(scaled, trt.ActivationType.TANH)
    layers.append(tanh)
    half_cdf = elementwise(elementwise(tanh.get_output(0), constant(1.0), ops.SUM), constant(0.5), ops.PROD)
    gelu = network.add_elementwise(half_cdf, x, ops.PROD)
    layers.append(gelu)
    if force_fp32:
        for layer in layers:
            layer.precision = trt.float32
    return gelu


def model_info(config: BertConfig, weights: WeightMap) -> ModelInfo:
    """The model's family, tokenizer kind and token-type count (the rows of its token-type table)."""
    return ModelInfo(config.model_type, config.tokenizer, int(weights["bert_embeddings_token_type_embeddings"].shape[0]))


def name_network(network: trt.INetworkDefinition, config: BertConfig, weights: WeightMap) -> None:
    """Record ``model_info`` in the network's name, which the engine keeps (``ICudaEngine.name``), so
    that runners pick the pre- and post-processing."""
    network.name = model_info(config, weights).network_name()


def add_channel_scale(
    network: trt.INetworkDefinition, x: trt.ITensor, scale: np.ndarray | None, channel_axis: int, name: str
) -> trt.ITensor:
    """``x`` times ``scale`` along its channel axis (a constant and an element-wise product; the
    result named ``name``), or ``x`` itself when there is no scale (activation smoothing's residual
    factors, ``helpers/smoothing.py``)."""
    if scale is None:
        return x
    shape = [1] * len(x.shape)
    shape[channel_axis] = scale.size
    factor = network.add_constant(tuple(shape), trt.Weights(np.ascontiguousarray(scale, dtype=np.float32)))
    scaled = network.add_elementwise(x, factor.get_output(0), trt.ElementWiseOperation.PROD).get_output(0)
    scaled.name = name
    return scaled


def set_output_range(layer: trt.ILayer, amax: float | np.ndarray, index: int = 0) -> None:
    value = float(np.asarray(amax).reshape(-1)[0])
    layer.get_output(index).set_dynamic_range(-value, value)


def amax(weights: WeightMap, name: str) -> float:
    if name not in weights:
        raise WeightLoadError(f"the QAT model has no {name!r} entry")
    return float(weights[name].reshape(-1)[0])


def set_qkv_input_range(weights: WeightMap, prefix: str, x: trt.ITensor) -> None:
    """The QAT range of the fused QKV layer's input ``x``, which the model's query, key and value
    input ranges of layer ``prefix`` must all give."""
    query = amax(weights, prefix + "attention_self_query_input_amax")
    for projection in ("key", "value"):
        other = amax(weights, f"{prefix}attention_self_{projection}_input_amax")
        if other != query:
            raise WeightLoadError(
                f"{prefix}attention_self_{projection}_input_amax ({other}) differs from "
                f"{prefix}attention_self_query_input_amax ({query}); the fused QKV needs one input range"
            )
    x.set_dynamic_range(-query, query)


def add_plugin(
    network: trt.INetworkDefinition,
    key: str,
    inputs: list[trt.ITensor],
    fields: list[trt.PluginField],
    config: BertConfig,
) -> trt.ILayer:
    plugin = create_plugin(key, trt.get_plugin_registry(), fields, config.use_deprecated_plugins)
    return add_plugin_to_network(network, plugin, inputs, config.use_deprecated_plugins)


def add_dense(
    network: trt.INetworkDefinition, x: trt.ITensor, outputs: int, kernel: np.ndarray, bias: np.ndarray
) -> trt.IConvolutionLayer:
    """A fully-connected layer over the E axis of [S, B, E, 1, 1], as a 1×1 convolution."""
    return network.add_convolution_nd(x, outputs, (1, 1), trt.Weights(kernel), trt.Weights(bias))


def add_embedding_projection(
    network: trt.INetworkDefinition, config: BertConfig, weights: WeightMap, x: trt.ITensor
) -> trt.ITensor:
    """The hidden-size input of the first layer: ``x`` itself, or, for factorized embeddings
    (``config.embedding_size``), ``x`` through the dense projection to the hidden size."""
    if config.embedding_size is None:
        return x
    projection = add_dense(network, x, config.hidden_size, weights[EMB_PROJ_W], weights[EMB_PROJ_B])
    projection.name = "embeddings_projection"
    return projection.get_output(0)


def network_creation_flags() -> int:
    # TensorRT 10 networks are always explicit-batch; the flag is gone from newer enums.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    return 0 if flag is None else 1 << int(flag)


# ---------------------------------------------------------------------------------------------
# Backend and weights


def compute_capability(backend: str) -> int:
    """major*10+minor of the GPU the engine runs on; 0 where the engine runs on the CPU."""
    if not torch.cuda.is_available():
        return 0
    index = 0
    if backend == "portable":
        device = portable_device()
        if device.type != "cuda":
            return 0
        index = device.index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return major * 10 + minor


def describe_backend(backend: str) -> str:
    if backend == "portable":
        return f"Using backend: portable (TensorRT API on PyTorch, device {portable_device()})"
    return f"Using backend: tensorrt {trt.__version__}"


def start_backend(args: argparse.Namespace) -> tuple[str, trt.ILogger]:
    """Select the backend (and the portable engine's device) of the command line; its logger logs which."""
    if args.device is not None:
        os.environ[DEVICE_ENV] = args.device
    select_backend(args.backend)
    backend = backend_name()
    logger = trt.Logger(trt.Logger.VERBOSE if args.verbose else trt.Logger.INFO)
    logger.log(trt.Logger.INFO, describe_backend(backend))
    return backend, logger


# The loader of each weight source option (-x, -pt, -m, -pkl, --hf).
WEIGHT_LOADERS = {
    "onnx": load_onnx_weights_and_quant,
    "pytorch": load_pytorch_weights_and_quant,
    "ckpt": load_tf_weights,
    "pickle": load_megatron_pickle_weights,
    "hf": load_hf_weights,
}


def first_weight_source(args: argparse.Namespace, kinds: Sequence[str], no_weights_message: str) -> tuple[str, str]:
    """(kind, path) of the first of ``kinds`` the command line gives a path for."""
    for kind in kinds:
        path = getattr(args, kind)
        if path is not None:
            return kind, path
    raise RuntimeError(no_weights_message)


# ---------------------------------------------------------------------------------------------
# Files


def check_output_paths(args: argparse.Namespace) -> None:
    """Refuse, before any weights are read, an engine, timing cache or calibration cache path that
    cannot be written."""
    for path in (args.output, args.timing_cache_file, getattr(args, "calib_path", None)):
        if path is not None:
            check_output_path(path)


def load_timing_cache(builder_config: trt.IBuilderConfig, path: str, logger: trt.ILogger) -> None:
    """Attach the timing cache stored at ``path`` (an empty one if the file does not exist yet).

    A file that is not a timing cache of this backend (garbage, another TensorRT version) gets a
    warning and an empty cache, as a cache only saves build time; the build then writes a fresh
    one over it.
    """
    data = b""
    if os.path.exists(path):
        data = read_limited(path, CACHE_FILE_MAX_BYTES, "timing cache")
    cache = builder_config.create_timing_cache(data)
    if cache is None:
        logger.log(
            trt.Logger.WARNING,
            f"timing cache {path} is not usable (see the error above); building without it, "
            "and a new one will be written there",
        )
        cache = builder_config.create_timing_cache(b"")
    builder_config.set_timing_cache(cache, ignore_mismatch=False)


def save_timing_cache(builder_config: trt.IBuilderConfig, path: str) -> None:
    cache = builder_config.get_timing_cache()
    write_file_atomically(path, memoryview(cache.serialize()))


# ---------------------------------------------------------------------------------------------
# Command line and build steps shared by builder.py and builder_varseqlen.py


def add_common_builder_options(parser: argparse.ArgumentParser) -> None:
    """The options both builders end their command line with, in the order they print."""
    parser.add_argument("--verbose", action="store_true", help="Verbose log and DETAILED profiling verbosity (default: false)")
    plugins = parser.add_mutually_exclusive_group()
    plugins.add_argument(
        "--use-v3-plugins",
        dest="use_deprecated_plugins",
        action="store_false",
        help="Use the IPluginV3 versions of the BERT plugins; excludes --use-deprecated-plugins (default: false)",
    )
    plugins.add_argument(
        "--use-deprecated-plugins",
        dest="use_deprecated_plugins",
        action="store_true",
        help="Use the IPluginV2 versions of the BERT plugins; excludes --use-v3-plugins (default: true)",
    )
    parser.set_defaults(use_deprecated_plugins=True)
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="TensorRT implementation: tensorrt, portable (TensorRT API on PyTorch), or auto\n"
        "(tensorrt when it imports, else portable) (default: auto)",
    )
    parser.add_argument(
        "--hf",
        help="HuggingFace question-answering folder (config.json + model.safetensors or pytorch_model.bin)\n"
        "of a BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ELECTRA or ALBERT model; also supplies the\n"
        "config when -c is absent (default: None)",
    )
    parser.add_argument(
        "--device",
        help=f"Device of the portable engine: cpu, cuda or cuda:N (default: ${DEVICE_ENV}, else cuda when available)",
    )


def parse_builder_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse like the original demo (unknown options ignored with a warning, prefixes accepted); -c or --hf is required.

    ``--fp8`` alone is ``--int8 --fp8``: the FP8 engine quantizes where the INT8 one does, with the
    same ranges (PTQ calibration or QAT), and ``-iln`` / ``-imh`` keep their INT8 meaning.
    """
    args = parse_known_options(parser, argv)
    if args.fp8:
        args.int8 = True
    if args.config_dir is None and args.hf is None:
        parser.error("the following arguments are required: -c/--config-dir (or --hf)")
    if args.workspace_size is not None and args.workspace_size < 0:
        parser.error(f"-w/--workspace-size is in MiB and cannot be negative, got {args.workspace_size}")
    return args


def load_builder_config(args: argparse.Namespace, logger: trt.ILogger, **options: bool | str | None) -> BertConfig:
    """The model configuration from -c (bert_config.json), else from the --hf folder's config.json."""
    if args.config_dir is not None:
        path = bert_config_path(args.config_dir)
        logger.log(trt.Logger.INFO, f"Using configuration file: {path}")
        return load_bert_config(path, **options)
    logger.log(trt.Logger.INFO, f"Using configuration file: {os.path.join(args.hf, 'config.json')}")
    return load_hf_config(args.hf, **options)


def serialize_network(
    builder: trt.Builder,
    network: trt.INetworkDefinition,
    builder_config: trt.IBuilderConfig,
    config: BertConfig,
    logger: trt.ILogger,
) -> trt.IHostMemory:
    """Build and serialize ``network``; saves the timing cache when one was asked for."""
    start = time.time()
    serialized = builder.build_serialized_network(network, builder_config)
    logger.log(trt.Logger.INFO, f"build engine in {time.time() - start:.3f} Sec")
    if serialized is None:
        raise RuntimeError("the engine build failed (see the TensorRT errors above)")
    if config.timing_cache is not None:
        save_timing_cache(builder_config, config.timing_cache)
    return serialized


def save_engine(serialized: trt.IHostMemory, path: str, logger: trt.ILogger) -> None:
    logger.log(trt.Logger.INFO, f"Saving Engine to {path}")
    write_file_atomically(path, memoryview(serialized))
    logger.log(trt.Logger.INFO, "Done.")


def run_builder(run: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Exit status of ``run(args)``: bad input is a one-line error on stderr and status 1 (Ctrl-C
    one line and SystemExit 130)."""
    try:
        exit_on_interrupt(run)(args)
    except (RuntimeError, ValueError, OSError, BackendError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1
    return 0
