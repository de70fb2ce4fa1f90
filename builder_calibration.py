"""The 8-bit side both BERT engine builders share: the --fp8/--smooth options and their checks, the
builder configuration's INT8 flags, and the post-training calibration flow (docs/SPEC.md
"Calibration").

Each builder brings ``make_calibrator(args, cache_file, config, weights, statistics=False)`` (its
SQuAD batches; ``statistics``: the batches of activation smoothing's statistics pass) and
``calibration_build(args, logger, config, weights, calibrator)`` (the FP32 build that runs a
calibrator, inside ``calibration_mode``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from bert_weights import BertConfig, WeightMap
from helpers.backend import trt
from helpers.hf_tokenization import OffsetTokenizer
from helpers.portable.calibration import parse_calibration_table
from helpers.runner import WORD_EMBEDDINGS_FIELD
from helpers.smoothing import CalibrationStatistics, default_cache_name, smoothed_weights, smoothing_alpha, smoothing_path
from helpers.tokenization import BertTokenizer

MakeCalibrator = Callable[..., Any]
CalibrationBuild = Callable[[argparse.Namespace, trt.ILogger, BertConfig, WeightMap, Any], None]


class SquadCalibrator(Protocol):
    """What ``check_calibration_vocabulary`` needs of the calibrators of ``helpers.calibrator``."""

    @property
    def tokenizer(self) -> BertTokenizer | OffsetTokenizer | None: ...


# ---------------------------------------------------------------------------------------------
# Command line


def add_calibration_options(parser: argparse.ArgumentParser, calib_num_help: str) -> None:
    """-j, -v, -n and -p: what the INT8 calibrator reads and where its cache goes."""
    parser.add_argument(
        "-j", "--squad-json", default="squad/dev-v1.1.json", help="SQuAD file read by the INT8 calibrator (default: squad/dev-v1.1.json)"
    )
    parser.add_argument(
        "-v",
        "--vocab-file",
        default="./pre-trained_model/uncased_L-24_H-1024_A-16/vocab.txt",
        help="Vocabulary used by the INT8 calibrator (default: ./pre-trained_model/uncased_L-24_H-1024_A-16/vocab.txt)",
    )
    parser.add_argument("-n", "--calib-num", default=100, type=int, help=calib_num_help)
    parser.add_argument("-p", "--calib-path", help="INT8 calibration cache file (default: None, a name derived from the model)")


def add_8bit_options(parser: argparse.ArgumentParser) -> None:
    """The 8-bit options both builders add to TensorRT's: --fp8 and --smooth."""
    parser.add_argument(
        "--fp8",
        action="store_true",
        help="Portable engine only: FP8 E4M3 GEMMs (FP32 accumulation) where --int8 would run INT8 ones, with the\n"
        "same ranges (PTQ calibration or QAT); implies --int8, and -iln / -imh keep their INT8 skip-LayerNorm /\n"
        "attention (default: false)",
    )
    parser.add_argument(
        "--smooth",
        type=smoothing_alpha,
        metavar="ALPHA",
        help="Portable engine only, with post-training calibration: divide each input channel j of the\n"
        "LayerNorm-fed GEMMs (QKV, FC1, the SQuAD head) by s_j = max|X_j|^ALPHA / max|W_j|^(1-ALPHA) and\n"
        "multiply the weights by it (SmoothQuant), so that outlier channels stop taking the whole\n"
        "8-bit range; 0 < ALPHA <= 1; the GELU output gets the range of least squared INT8 error over the\n"
        "calibration batches instead of GELU10. Without it, per-tensor ranges as TensorRT (default: None)",
    )


def check_8bit_options(args: argparse.Namespace, backend: str, qat: bool) -> None:
    """The errors of the 8-bit options both builders share; ``qat``: the model brings its INT8 ranges."""
    if args.fp8 and backend != "portable":
        raise RuntimeError("--fp8 is only available on the portable engine (--backend portable)")
    if args.smooth is None:
        return
    if not args.int8:
        raise RuntimeError("--smooth needs --int8: it rescales the inputs of the 8-bit GEMMs")
    if backend != "portable":
        raise RuntimeError("--smooth is only available on the portable engine (--backend portable)")
    if qat:
        raise RuntimeError("--smooth needs post-training calibration; a QAT model brings its own ranges")


# ---------------------------------------------------------------------------------------------
# Build


def set_8bit_flags(builder_config: trt.IBuilderConfig, config: BertConfig, calibrator: trt.IInt8Calibrator | None) -> None:
    """INT8 (and FP8) kernels when the model asks for them, calibrated by ``calibrator`` if given."""
    if not config.use_int8:
        return
    builder_config.set_flag(trt.BuilderFlag.INT8)
    if calibrator is not None:
        builder_config.set_quantization_flag(trt.QuantizationFlag.CALIBRATE_BEFORE_FUSION)
        builder_config.int8_calibrator = calibrator
    if config.use_fp8:
        builder_config.set_flag(trt.BuilderFlag.FP8)


def network_tensor_names(network: trt.INetworkDefinition) -> set[str]:
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        names.update(layer.get_output(i).name for i in range(layer.num_outputs))
    return names


def warn_if_cache_misses_network(network: trt.INetworkDefinition, calibrator: trt.IInt8Calibrator, logger: trt.ILogger) -> None:
    """A calibration cache that names none of this network's tensors gives no layer an INT8 range:
    the build succeeds but runs in higher precision, so say so."""
    cache = calibrator.read_calibration_cache()
    if cache is None:
        return  # calibration will run on this very network
    # BertCalibrator knows its file; any other IInt8Calibrator is named generically.
    source = getattr(calibrator, "cache_file", "the calibrator's cache")
    _, ranges = parse_calibration_table(cache, source)
    if not set(ranges) & network_tensor_names(network):
        sample = ", ".join(repr(name) for name in list(ranges)[:3]) or "no tensor at all"
        logger.log(
            trt.Logger.WARNING,
            f"calibration cache {source} names none of the network's tensors (it names {sample}); "
            "no layer gets an INT8 range. Is it the cache of another model? Delete it to calibrate again.",
        )


# ---------------------------------------------------------------------------------------------
# Post-training calibration


def check_calibration_vocabulary(calibrator: SquadCalibrator, weights: WeightMap, vocab_file: str) -> None:
    """Refuse a vocabulary with ids past the model's word embedding table when a calibration will
    read it (a calibrator whose cache exists loads no tokenizer)."""
    if calibrator.tokenizer is not None:
        calibrator.tokenizer.check_embedding_rows(weights[WORD_EMBEDDINGS_FIELD].shape[0], vocab_file)


@contextlib.contextmanager
def calibration_mode(config: BertConfig) -> Iterator[None]:
    """``config`` as the calibration build wants it while the block runs: FP32, float plugin I/O."""
    saved_fp16 = config.use_fp16
    config.use_fp16, config.is_calib_mode = False, True
    try:
        yield
    finally:
        config.use_fp16, config.is_calib_mode = saved_fp16, False


def calibration_statistics(
    make_calibrator: MakeCalibrator,
    calibration_build: CalibrationBuild,
    args: argparse.Namespace,
    logger: trt.ILogger,
    config: BertConfig,
    weights: WeightMap,
) -> CalibrationStatistics:
    """Activation smoothing's statistics over the calibration batches of the FP32 network of
    ``weights``: per dense layer, the largest |x| of each input channel, and the least-squared-error
    INT8 range of each dense layer's input."""
    statistics = make_calibrator(args, None, config, weights, statistics=True)
    calibration_build(args, logger, config, weights, statistics)
    return CalibrationStatistics(statistics.channel_maxima, statistics.mse_ranges)


def post_training_calibration(
    args: argparse.Namespace,
    logger: trt.ILogger,
    config: BertConfig,
    weights: WeightMap,
    default_cache_file: str,
    make_calibrator: MakeCalibrator,
    calibration_build: CalibrationBuild,
    pre_pass: bool,
) -> tuple[WeightMap, trt.IInt8Calibrator]:
    """The weights (smoothed with ``--smooth``) and the calibrator of an INT8 build without QAT ranges.

    The cache is ``-p`` or ``default_cache_file``.  With ``pre_pass``, an FP32 build calibrates once
    and writes it, so that the INT8 build only reads it (docs/SPEC.md "Calibration").
    """
    cache_file = args.calib_path or default_cache_name(default_cache_file, args.smooth)
    statistics = functools.partial(calibration_statistics, make_calibrator, calibration_build, args, logger, config, weights)
    smoothed = smoothed_weights(weights, config, args.smooth, cache_file, statistics)
    if args.smooth is not None:
        logger.log(trt.Logger.INFO, f"activation smoothing --smooth {args.smooth:g}: scales in {smoothing_path(cache_file)}")
    if pre_pass and not os.path.exists(cache_file):
        calibration_build(args, logger, config, smoothed, make_calibrator(args, cache_file, config, smoothed))
        logger.log(trt.Logger.INFO, f"calibration cache generated in {cache_file}")
    return smoothed, make_calibrator(args, cache_file, config, smoothed)
