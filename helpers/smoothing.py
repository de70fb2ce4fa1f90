"""Activation smoothing for 8-bit engines (SmoothQuant), the builders' ``--smooth ALPHA``.

TensorRT quantizes a GEMM's input with one scale for the whole tensor.  A model whose activations
carry a few outlier channels (MiniLM-L6: channel 99 of the residual stream reaches 30 against an
rms of 0.7) then spends the 8-bit grid on those channels and rounds the others to a handful of
levels.  Smoothing divides each input channel ``j`` of a GEMM by

    s_j = max|X_j|^α / max|W_j|^(1-α)

(``max|X_j|`` over the calibration batches of the unsmoothed FP32 network, ``max|W_j|`` over the
weight's column ``j``) and multiplies the weight's column ``j`` by ``s_j``: the float product is
unchanged, and the quantized input has its outliers moved into the per-channel-scaled weights.

Where the division is done, per GEMM of the builders' networks:

* QKV (input: the embedding LayerNorm or the previous layer's output skip-LayerNorm), FC1 (input:
  the attention skip-LayerNorm) and the SQuAD head (input: the last skip-LayerNorm): ``1/s`` is
  folded into that LayerNorm's gamma and beta, so the GEMM's input costs nothing extra (with
  factorized embeddings, ALBERT and ELECTRA, into the output rows of the embedding projection that
  feeds the first QKV).  In BERT
  that LayerNorm output is also the residual of the next skip-LayerNorm, which must add the
  unsmoothed value: the builders multiply that skip input by ``s`` (``SKIP_SCALE``, a constant and
  an element-wise product on the residual path; LayerNorm is not linear per channel, so ``s``
  cannot be folded into the next LayerNorm).  The head's LayerNorm output has no other reader.
* FC2 (input: the GELU output) is not smoothed: GELU is not linear, so ``1/s`` would cost a product
  of its own, and the GELU's sparse channels make the scales overfit the calibration batches (on
  MiniLM, calibrated on 8 of 20 questions, smoothing FC2 too drops the logits' cosine with FP32 from
  0.95 to 0.85).  Its input keeps one range for the whole tensor, but not GELU10's fixed 10: the
  range whose INT8 quantization of the GELU output has the least squared error over the same
  batches (``gelu_ranges``; ``GELU_RANGE`` in the weight map).  Most GELU outputs lie near zero, so
  a step of 10/127 rounds them coarsely, while the few values beyond the chosen range lose less
  when saturated.  FP8 builds keep GELU10 (``smooth_weights``).

The calibration that follows (``-p`` cache) measures the smoothed tensors.  The scales are kept next
to that cache (``smoothing_path``), so a later build with the same cache rebuilds the same network
without the SQuAD file; a cache calibrated with another ``--smooth`` (or none) is refused.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from bert_weights import BertConfig, WeightMap
from bert_weights.names import EMB_PROJ_B, EMB_PROJ_W, SQD_W, W_MID, WQKV
from helpers.files import CACHE_FILE_MAX_BYTES, read_limited, write_bytes_atomically

# The names of the smoothed dense layers in both builders' networks (``l{i}_`` + name; the head
# without prefix): the calibration statistics are keyed by them.
QKV_LAYER = "attention_qkv"
FC1_LAYER = "intermediate_dense"
HEAD_LAYER = "cls_squad_output"

# The weight-map entry, after a skip-LayerNorm's prefix (``l{i}_attention_output_layernorm_``,
# ``l{i}_output_layernorm_``), that the builders turn into the channel factor of its skip input.
SKIP_SCALE = "skip_scale"
# The weight-map entry, after a layer's prefix, holding the range of its GELU output (shape (1,)).
GELU_RANGE = "gelu_range"
# "GELU10": the GELU output's range in the demo's post-training calibration.
GELU10 = 10.0

EMBEDDING_LAYERNORM = "bert_embeddings_layernorm_"
FORMAT_VERSION = 2


@dataclass
class CalibrationStatistics:
    """What the statistics pass over the unsmoothed FP32 network measures: per dense layer name, the
    largest |x| of each input channel; per dense layer input tensor name, the INT8 range of least
    squared error."""

    channel_maxima: Mapping[str, np.ndarray]
    mse_ranges: Mapping[str, float]


class SmoothingError(ValueError):
    """Smoothing scales that cannot be used with this build (one-line message)."""


def smoothing_alpha(text: str) -> float:
    """``--smooth``'s value: the migration strength α, 0 < α ≤ 1."""
    try:
        alpha = float(text)
    except ValueError:
        alpha = float("nan")
    if not 0.0 < alpha <= 1.0:
        raise argparse.ArgumentTypeError(f"takes a migration strength 0 < ALPHA <= 1, got {text!r}")
    return alpha


def default_cache_name(name: str, alpha: float | None) -> str:
    """The default calibration cache name of a build: smoothed builds measure other tensors."""
    return name if alpha is None else f"{name}Smooth{alpha:g}"


def smoothing_path(cache_file: str) -> str:
    """Where the scales of a smoothed build's calibration cache are kept."""
    return cache_file + ".smoothing.npz"


def smoothed_layers(config: BertConfig) -> dict[str, str]:
    """Dense layer name → its ``[out, in]`` kernel in the weight map, whose input columns its scales multiply."""
    layers = {}
    for i in range(config.num_hidden_layers):
        prefix = f"l{i}_"
        layers[prefix + QKV_LAYER] = prefix + WQKV
        layers[prefix + FC1_LAYER] = prefix + W_MID
    layers[HEAD_LAYER] = "cls_" + SQD_W
    return layers


def gelu_output_range(weights: WeightMap, prefix: str) -> float:
    """The range a post-training build gives layer ``prefix``'s GELU output: the smoothed build's
    measured one, else GELU10."""
    measured = weights.get(prefix + GELU_RANGE)
    return GELU10 if measured is None else float(measured.reshape(-1)[0])


def gelu_ranges(mse_ranges: Mapping[str, float], config: BertConfig) -> dict[str, np.ndarray]:
    """``l{i}_`` + ``GELU_RANGE`` → the least-squared-error range of layer i's GELU output
    (the builders name that tensor ``l{i}_gelu``)."""
    ranges = {}
    for i in range(config.num_hidden_layers):
        tensor = f"l{i}_gelu"
        if tensor not in mse_ranges:
            raise SmoothingError(f"the calibration statistics have no range for the tensor {tensor!r}")
        ranges[f"l{i}_" + GELU_RANGE] = np.array([mse_ranges[tensor]], dtype=np.float32)
    return ranges


def smoothing_scales(
    maxima: Mapping[str, np.ndarray], weights: WeightMap, config: BertConfig, alpha: float
) -> dict[str, np.ndarray]:
    """s per input channel of every smoothed GEMM, from its input's per-channel maxima ``maxima``
    (by dense layer name); 1 for a channel whose activation or weight column is all zeros."""
    scales = {}
    for layer, kernel in smoothed_layers(config).items():
        if layer not in maxima:
            raise SmoothingError(f"the calibration statistics have no input maxima for the dense layer {layer!r}")
        x_max = np.asarray(maxima[layer], dtype=np.float64).reshape(-1)
        w_max = np.abs(weights[kernel].astype(np.float64)).max(axis=0)
        live = (x_max > 0) & (w_max > 0)
        s = np.ones_like(x_max)
        s[live] = x_max[live] ** alpha / w_max[live] ** (1.0 - alpha)
        scales[layer] = s.astype(np.float32)
    return scales


def smooth_weights(weights: WeightMap, config: BertConfig, scales: Mapping[str, np.ndarray]) -> WeightMap:
    """A new weight map with ``scales`` migrated (see the module docstring): kernels' input columns
    times s, the producing LayerNorms' gamma and beta divided by s, and the residual factors the
    builders apply (``SKIP_SCALE``); the GELU output ranges among ``scales`` (``GELU_RANGE``) are
    copied in, except for FP8 GEMMs, which keep GELU10: E4M3's exponent already resolves the small
    GELU outputs that a narrower range helps INT8 with, and a narrower range would only clip."""
    smoothed = dict(weights)
    if not config.use_fp8:
        smoothed.update({name: value for name, value in scales.items() if name.endswith(GELU_RANGE)})

    def scale_columns(kernel_name: str, s: np.ndarray) -> None:
        smoothed[kernel_name] = (weights[kernel_name] * s).astype(np.float32)

    def divide_layernorm(prefix: str, s: np.ndarray) -> None:
        for name in ("gamma", "beta"):
            smoothed[prefix + name] = (weights[prefix + name].reshape(-1) / s).astype(np.float32)

    def divide_first_layer_input(s: np.ndarray) -> None:
        if config.embedding_size is None:
            divide_layernorm(EMBEDDING_LAYERNORM, s)
        else:
            smoothed[EMB_PROJ_W] = (weights[EMB_PROJ_W] / s[:, None]).astype(np.float32)
            smoothed[EMB_PROJ_B] = (weights[EMB_PROJ_B] / s).astype(np.float32)

    last = config.num_hidden_layers - 1
    for i in range(config.num_hidden_layers):
        prefix = f"l{i}_"
        attention_ln, output_ln = prefix + "attention_output_layernorm_", prefix + "output_layernorm_"
        qkv = scales[prefix + QKV_LAYER]
        scale_columns(prefix + WQKV, qkv)
        if i == 0:
            divide_first_layer_input(qkv)
        else:
            divide_layernorm(f"l{i - 1}_output_layernorm_", qkv)
        smoothed[attention_ln + SKIP_SCALE] = qkv
        fc1 = scales[prefix + FC1_LAYER]
        scale_columns(prefix + W_MID, fc1)
        divide_layernorm(attention_ln, fc1)
        smoothed[output_ln + SKIP_SCALE] = fc1
    head = scales[HEAD_LAYER]
    scale_columns("cls_" + SQD_W, head)
    divide_layernorm(f"l{last}_output_layernorm_", head)
    return smoothed


def read_scales(cache_file: str, alpha: float) -> dict[str, np.ndarray] | None:
    """The scales kept for ``cache_file`` (None when there are none); another α is an error."""
    path = smoothing_path(cache_file)
    if not os.path.exists(path):
        return None
    data = read_limited(path, CACHE_FILE_MAX_BYTES, "smoothing scales")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError) as err:
        raise SmoothingError(f"{path}: not smoothing scales ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if int(arrays.pop("format_version", -1)) != FORMAT_VERSION or "alpha" not in arrays:
        raise SmoothingError(f"{path}: not smoothing scales of format version {FORMAT_VERSION}")
    stored_alpha = float(arrays.pop("alpha"))
    if stored_alpha != alpha:
        raise SmoothingError(
            f"calibration cache {cache_file} was calibrated with --smooth {stored_alpha:g}: pass that, or another -p"
        )
    return arrays


def write_scales(cache_file: str, alpha: float, scales: Mapping[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, format_version=np.int64(FORMAT_VERSION), alpha=np.float64(alpha), **scales)
    write_bytes_atomically(smoothing_path(cache_file), buffer.getvalue())


def smoothed_weights(
    weights: WeightMap,
    config: BertConfig,
    alpha: float | None,
    cache_file: str,
    statistics: Callable[[], CalibrationStatistics],
) -> WeightMap:
    """The weights a PTQ build calibrates and builds with: ``weights`` itself without ``--smooth``,
    else smoothed with the scales and GELU ranges kept for ``cache_file`` or, when there are none
    yet, with those from ``statistics()`` (a pass over the unsmoothed FP32 network), which are kept.

    A cache calibrated without smoothing, or with another α, is refused: its ranges are those of
    other tensors."""
    if alpha is None:
        if os.path.exists(smoothing_path(cache_file)):
            raise SmoothingError(
                f"calibration cache {cache_file} was calibrated with --smooth ({smoothing_path(cache_file)}): "
                "pass it, or another -p"
            )
        return weights
    scales = read_scales(cache_file, alpha)
    if scales is None:
        if os.path.exists(cache_file):
            raise SmoothingError(f"calibration cache {cache_file} was calibrated without --smooth: delete it, or pass another -p")
        measured = statistics()
        scales = {**smoothing_scales(measured.channel_maxima, weights, config, alpha), **gelu_ranges(measured.mse_ranges, config)}
        write_scales(cache_file, alpha, scales)
    expected = smoothed_layers(config)
    ranges = {f"l{i}_" + GELU_RANGE for i in range(config.num_hidden_layers)}
    if (
        set(scales) != set(expected) | ranges
        or any(scales[layer].shape != weights[kernel].shape[1:] for layer, kernel in expected.items())
        or any(scales[name].shape != (1,) for name in ranges)
    ):
        raise SmoothingError(f"{smoothing_path(cache_file)}: its scales do not fit this model's dense layers")
    return smooth_weights(weights, config, scales)
