"""INT8 post-training calibration for the portable engine, and TensorRT's calibration-table format.

The portable builder calls ``calibrate_engine_description`` once per INT8 build that has a
calibrator.  It either reads the calibrator's cache, or runs the engine description's reference
plan over the calibrator's batches, feeds every float tensor the network produces into a histogram
of |x|, and turns each histogram into a symmetric range ``amax`` with the calibrator's algorithm:

* ``LEGACY_CALIBRATION`` (``IInt8LegacyCalibrator``).  TensorRT documents the two parameters
  only as "the quantile used to select the region maximum" and "the fraction of the maximum
  used to define the regression cutoff"; the white paper it refers to is not public.  We take
  the smallest histogram edge below which ``quantile`` of all |x| samples lie, and never go
  above ``regression_cutoff · max|x|``.  With the demo's 0.9999 / 1.0 that is the 99.99th
  percentile of |x|: the rarest 0.01% of values saturate.
* ``ENTROPY_CALIBRATION_2`` (``IInt8EntropyCalibrator2``): the threshold that minimises the
  KL divergence between the clipped reference distribution and its 128-level quantized copy,
  over candidate thresholds of 128..N histogram bins (TensorRT's published method, GTC 2017).
* ``MINMAX_CALIBRATION``: max |x|.

The cache is TensorRT's calibration table: a header line ``TRT-<version>-<Algorithm>``, then one
``<tensor name>: <scale>`` line per tensor, the scale (``amax / 127``) written as the hex digits
of its big-endian IEEE float32 bits.  Tables from either backend read on the other.  A table is
used whatever algorithm its header names (TensorRT would recalibrate on a mismatch); its tensor
names are the network's, so names it has that the network lacks are ignored.  Each tensor without a
range set by the network (``ITensor.set_dynamic_range``, e.g. GELU10) gets the calibrated one, stored
in the engine file with the tensors.

Portable extensions (activation smoothing, ``helpers/smoothing.py``), when batches ran: a
calibrator with a ``write_channel_maxima(maxima)`` method also gets the largest |x| of each input
channel of every convolution, keyed by the convolution layer's name; one with
``write_mse_ranges(ranges)`` gets, for every convolution's input tensor (by tensor name), the INT8
range of least squared quantization error (``mse_amax``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from helpers.portable.device import wrap_pointer
from helpers.portable.enums import CalibrationAlgoType, DataType
from helpers.portable.graph import load_graph
from helpers.portable.layers import BuildError, is_known
from helpers.portable.passes import reference_plan

INT8_MAX = 127.0
# Histogram resolution: TensorRT's entropy calibrator works on 2048 bins; growth beyond this
# factor (a later batch with a much larger max) halves the resolution instead of adding bins.
HISTOGRAM_BINS = 2048
_MAX_BINS = 4 * HISTOGRAM_BINS
_ENTROPY_LEVELS = 128
# The demo's legacy calibrator parameters (docs/SPEC.md "Calibration").
LEGACY_QUANTILE = 0.9999
LEGACY_REGRESSION_CUTOFF = 1.0

# The TensorRT version written into table headers this engine produces (10.16.0 → 101600).
TABLE_TRT_VERSION = 101600


class CalibrationError(ValueError):
    """A calibration cache or calibrator that cannot be used (one-line message)."""


# Algorithm names as they appear in a calibration table's header line.
TABLE_ALGORITHM_NAMES = {
    CalibrationAlgoType.LEGACY_CALIBRATION: "LegacyCalibration",
    CalibrationAlgoType.ENTROPY_CALIBRATION: "EntropyCalibration",
    CalibrationAlgoType.ENTROPY_CALIBRATION_2: "EntropyCalibration2",
    CalibrationAlgoType.MINMAX_CALIBRATION: "MinMaxCalibration",
}


class IInt8Calibrator:
    """TensorRT's calibrator interface: subclasses override the ``get_*``/cache methods."""

    def __init__(self) -> None:
        pass

    def get_algorithm(self) -> CalibrationAlgoType:
        return CalibrationAlgoType.ENTROPY_CALIBRATION_2

    def get_batch_size(self) -> int:
        return 1

    def get_batch(self, names: list[str]) -> list[int] | None:
        return None

    def read_calibration_cache(self) -> bytes | None:
        return None

    def write_calibration_cache(self, cache: bytes | memoryview) -> None:
        return None


class IInt8EntropyCalibrator2(IInt8Calibrator):
    def get_algorithm(self) -> CalibrationAlgoType:
        return CalibrationAlgoType.ENTROPY_CALIBRATION_2


class IInt8EntropyCalibrator(IInt8Calibrator):
    def get_algorithm(self) -> CalibrationAlgoType:
        return CalibrationAlgoType.ENTROPY_CALIBRATION


class IInt8MinMaxCalibrator(IInt8Calibrator):
    def get_algorithm(self) -> CalibrationAlgoType:
        return CalibrationAlgoType.MINMAX_CALIBRATION


class IInt8LegacyCalibrator(IInt8Calibrator):
    def get_algorithm(self) -> CalibrationAlgoType:
        return CalibrationAlgoType.LEGACY_CALIBRATION

    def get_quantile(self) -> float:
        return LEGACY_QUANTILE

    def get_regression_cutoff(self) -> float:
        return LEGACY_REGRESSION_CUTOFF

    def read_histogram_cache(self, length: int = 0) -> bytes | None:
        return None

    def write_histogram_cache(self, data: bytes | memoryview, length: int = 0) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# Calibration table text


def scale_to_hex(scale: float) -> str:
    """The table spelling of a float32 scale: hex of its big-endian bits, lower case."""
    return format(struct.unpack(">I", struct.pack(">f", scale))[0], "x")


def hex_to_scale(text: str) -> float:
    bits = int(text, 16)
    if not 0 <= bits <= 0xFFFFFFFF:
        raise ValueError(f"{text!r} is not 32 bits")
    return struct.unpack(">f", struct.pack(">I", bits))[0]


def format_table_version(version: str | int) -> int:
    """``"10.3.0.26"`` → 100300, ``"8.6.1"`` → 8601 (TensorRT's header number)."""
    if isinstance(version, int):
        return version
    parts = [int(p) for p in (version.split(".") + ["0", "0"])[:3]]
    major, minor, patch = parts
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def write_calibration_table(
    amax: Mapping[str, float], algorithm: CalibrationAlgoType, version: int = TABLE_TRT_VERSION
) -> bytes:
    """Ranges → table bytes, tensors in the given order."""
    lines = [f"TRT-{version}-{TABLE_ALGORITHM_NAMES[CalibrationAlgoType(int(algorithm))]}"]
    for name, value in amax.items():
        if "\n" in name:
            raise CalibrationError(f"tensor name {name!r} cannot be written to a calibration table")
        lines.append(f"{name}: {scale_to_hex(float(np.float32(value / INT8_MAX)))}")
    return ("\n".join(lines) + "\n").encode()


def parse_calibration_table(data: bytes | bytearray | memoryview | str, source: str = "calibration cache") -> tuple[str, dict[str, float]]:
    """Table bytes → (algorithm name from the header, {tensor name: amax}).

    The amax is ``127 · scale`` with the scale read back bit-exactly.  Raises
    ``CalibrationError`` naming ``source`` and the line for anything else.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            raise CalibrationError(f"{source}: not a calibration table (invalid byte at offset {err.start})") from None
    else:
        text = data
    lines = text.splitlines()
    if not lines or not lines[0].startswith("TRT-") or lines[0].count("-") < 2:
        raise CalibrationError(f"{source}: not a calibration table (the first line must be TRT-<version>-<algorithm>)")
    _, version, algorithm = lines[0].split("-", 2)
    if not version.isdigit() or algorithm not in TABLE_ALGORITHM_NAMES.values():
        raise CalibrationError(f"{source}: unknown calibration table header {lines[0]!r}")
    ranges: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        try:
            if not sep or not name:
                raise ValueError("no 'name: value'")
            scale = hex_to_scale(value.strip())
        except ValueError:
            raise CalibrationError(f"{source}: line {number} is not '<tensor>: <hex scale>': {line[:80]!r}") from None
        if not math.isfinite(scale) or scale < 0:
            raise CalibrationError(f"{source}: line {number}: scale of {name!r} is {scale}")
        ranges[name] = scale * INT8_MAX
    return algorithm, ranges


# ---------------------------------------------------------------------------------------------
# Histograms and range algorithms


class AbsHistogram:
    """Histogram of |x| over [0, bins·width), widened (by merging bins) as larger values arrive."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None
        self.width = 0.0
        self.max = 0.0

    def add(self, values: torch.Tensor) -> None:
        magnitudes = values.detach().float().abs().flatten()
        if magnitudes.numel() == 0:
            return
        batch_max = float(magnitudes.max())
        if not math.isfinite(batch_max):
            raise CalibrationError("calibration saw a non-finite activation (inf/nan)")
        self.max = max(self.max, batch_max)
        if self.counts is None:
            self.width = (batch_max or 1.0) / HISTOGRAM_BINS
            self.counts = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
        needed = max(len(self.counts), math.ceil(self.max / self.width))  # histc keeps x == max in the last bin
        if needed > len(self.counts):
            factor = 1
            while needed > _MAX_BINS * factor:
                factor *= 2
            if factor > 1:
                padded = np.zeros(-(-len(self.counts) // factor) * factor, dtype=np.int64)
                padded[: len(self.counts)] = self.counts
                self.counts = padded.reshape(-1, factor).sum(axis=1)
                self.width *= factor
                needed = math.ceil(self.max / self.width)
            self.counts = np.concatenate([self.counts, np.zeros(needed - len(self.counts), dtype=np.int64)])
        bins = len(self.counts)
        hist = torch.histc(magnitudes, bins=bins, min=0.0, max=bins * self.width)
        self.counts += hist.to(torch.int64).cpu().numpy()

    def edges(self) -> np.ndarray:
        assert self.counts is not None
        return np.arange(1, len(self.counts) + 1, dtype=np.float64) * self.width


def legacy_amax(hist: AbsHistogram, quantile: float, regression_cutoff: float) -> float:
    """Smallest bin edge holding ``quantile`` of the samples, capped at ``cutoff · max``."""
    if not (0.0 < quantile <= 1.0 and 0.0 < regression_cutoff <= 1.0):
        raise CalibrationError(f"quantile {quantile} and regression cutoff {regression_cutoff} must be in (0, 1]")
    if hist.counts is None or hist.max == 0.0:
        return 0.0
    cdf = np.cumsum(hist.counts) / hist.counts.sum()
    index = int(np.searchsorted(cdf, quantile - 1e-12))
    edge = float(hist.edges()[min(index, len(cdf) - 1)])
    return min(edge, hist.max, regression_cutoff * hist.max)


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q = q / q.sum()
    support = p > 0
    if np.any(q[support] == 0):
        return math.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def entropy_amax(hist: AbsHistogram, levels: int = _ENTROPY_LEVELS) -> float:
    """The clipping threshold whose 128-level quantization loses the least information (KL)."""
    if hist.counts is None or hist.max == 0.0:
        return 0.0
    counts, width = hist.counts.astype(np.float64), hist.width
    if len(counts) > HISTOGRAM_BINS:  # the search is quadratic in the bin count: work on 2048 bins
        factor = -(-len(counts) // HISTOGRAM_BINS)
        counts = np.pad(counts, (0, -len(counts) % factor)).reshape(-1, factor).sum(axis=1)
        width *= factor
    nonzero = np.nonzero(counts)[0]
    used = int(nonzero[-1]) + 1
    if used <= levels:
        return float(hist.max)
    best_bins, best_kl = used, math.inf
    for bins in range(levels, used + 1):
        reference = counts[:bins].copy()
        reference[-1] += counts[bins:].sum()  # clipped outliers land in the last kept bin
        # Merge the kept bins into `levels` groups, then spread each group's mass evenly back
        # over its bins that were non-empty (empty bins stay empty, as in the reference).
        group = (np.arange(bins) * levels) // bins
        candidate = np.zeros(bins)
        present = reference > 0
        group_mass = np.bincount(group, weights=counts[:bins], minlength=levels)
        group_present = np.bincount(group, weights=present.astype(np.float64), minlength=levels)
        share = np.divide(group_mass, group_present, out=np.zeros(levels), where=group_present > 0)
        candidate[present] = share[group[present]]
        kl = _kl_divergence(reference, candidate)
        if kl < best_kl:
            best_bins, best_kl = bins, kl
    return float(min((best_bins + 0.5) * width, hist.max))


def mse_amax(hist: AbsHistogram, candidates: int = 512) -> float:
    """The range t (of ``candidates`` evenly spaced up to max |x|) whose symmetric INT8 quantization of
    the histogram's samples has the least expected squared error, each sample spread evenly over its
    bin: beyond t it saturates to t; within t it rounds, exactly where the bin is narrower than a
    step (the centre's rounding error plus the bin's own spread), with the uniform step²/12 where
    a bin spans several steps."""
    if hist.counts is None or hist.max == 0.0:
        return 0.0
    counts = hist.counts.astype(np.float64)
    centres = (np.arange(len(counts)) + 0.5) * hist.width
    thresholds = np.arange(1, candidates + 1, dtype=np.float64)[:, None] * (hist.max / candidates)
    step = thresholds / INT8_MAX
    spread = hist.width**2 / 12.0
    rounding = np.where(hist.width < step, (centres - np.round(centres / step) * step) ** 2 + spread, step**2 / 12.0)
    error = np.where(centres > thresholds, (centres - thresholds) ** 2 + spread, rounding)
    return float(thresholds[int(np.argmin(error @ counts)), 0])


def amax_from_histogram(hist: AbsHistogram, calibrator: IInt8Calibrator) -> float:
    algorithm = CalibrationAlgoType(int(calibrator.get_algorithm()))
    if algorithm == CalibrationAlgoType.LEGACY_CALIBRATION:
        # Legacy calibrators written against other base classes may lack the two getters.
        quantile = getattr(calibrator, "get_quantile", lambda: LEGACY_QUANTILE)()
        cutoff = getattr(calibrator, "get_regression_cutoff", lambda: LEGACY_REGRESSION_CUTOFF)()
        return legacy_amax(hist, float(quantile), float(cutoff))
    if algorithm == CalibrationAlgoType.MINMAX_CALIBRATION:
        return float(hist.max)
    return entropy_amax(hist)


# ---------------------------------------------------------------------------------------------
# The calibration pass


RunNetwork = Callable[[dict[str, torch.Tensor], Callable[[str, torch.Tensor], None]], None]


class ChannelMaxima:
    """max |x| of each channel (along ``axes[name]``) of the named tensors over the batches seen."""

    def __init__(self, axes: Mapping[str, int]) -> None:
        self.axes = dict(axes)
        self.values: dict[str, torch.Tensor] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        axis = self.axes.get(name)
        if axis is None:
            return
        others = [d for d in range(value.dim()) if d != axis]
        batch_max = value.detach().float().abs().amax(dim=others) if others else value.detach().float().abs()
        previous = self.values.get(name)
        self.values[name] = batch_max if previous is None else torch.maximum(previous, batch_max)


def calibrate(
    input_specs: Iterable[tuple[str, Sequence[int], DataType]],
    calibrator: IInt8Calibrator,
    run_fp32: RunNetwork,
    device: torch.device,
    source: str = "calibration cache",
    channels: ChannelMaxima | None = None,
    histograms: dict[str, AbsHistogram] | None = None,
) -> dict[str, float]:
    """Ranges for every float tensor the network produces, from the cache or from batches.

    ``input_specs``: (name, static shape, TensorRT dtype) of each network input, in order;
    ``run_fp32(feeds, observe)`` runs the FP32 network and calls ``observe(name, tensor)`` for
    every tensor it produces.  A freshly computed table goes to ``write_calibration_cache``;
    ``channels``, when given, also collects its tensors' per-channel maxima from the batches;
    ``histograms``, when given, receives the histogram of every tensor the batches produced.
    """
    cached = calibrator.read_calibration_cache()
    if cached:
        _, ranges = parse_calibration_table(cached, source)
        return ranges
    specs = list(input_specs)
    names = [name for name, _, _ in specs]
    if histograms is None:
        histograms = {}

    def observe(name: str, value: torch.Tensor) -> None:
        if value.is_floating_point():
            histograms.setdefault(name, AbsHistogram()).add(value)
            if channels is not None:
                channels.add(name, value)

    batches = 0
    while True:
        pointers = calibrator.get_batch(names)
        if not pointers:
            break
        if len(pointers) != len(specs):
            raise CalibrationError(f"calibrator returned {len(pointers)} buffers for {len(specs)} network inputs")
        feeds = {
            name: wrap_pointer(pointer, tuple(shape), dtype, device).clone()
            for (name, shape, dtype), pointer in zip(specs, pointers)
        }
        for name, value in feeds.items():
            observe(name, value)
        with torch.no_grad():
            run_fp32(feeds, observe)
        batches += 1
    if batches == 0:
        raise CalibrationError("INT8 calibration needs at least one batch, and the calibrator gave none")
    ranges = {name: amax_from_histogram(hist, calibrator) for name, hist in histograms.items()}
    calibrator.write_calibration_cache(write_calibration_table(ranges, calibrator.get_algorithm()))
    return ranges


def _calibration_input_specs(description: dict[str, Any]) -> list[tuple[str, tuple[int, ...], DataType]]:
    """(name, shape, dtype) of every input: its static shape, else the first profile's opt shape."""
    specs = []
    for slot in description["inputs"]:
        tensor = description["tensors"][slot]
        shape = tensor["shape"]
        if not is_known(shape):
            shape = description["profiles"][0][tensor["name"]][1]
        specs.append((tensor["name"], tuple(shape), DataType(tensor["dtype"])))
    return specs


def convolution_inputs(description: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Convolution layer name → (its input tensor's name, that tensor's channel axis)."""
    tensors = description["tensors"]
    inputs = {}
    for layer in description["layers"]:
        if layer["kind"] == "convolution":
            tensor = tensors[layer["inputs"][0]]
            spatial = len(layer["params"]["kernel_shape"])
            inputs[layer["name"]] = (tensor["name"], len(tensor["shape"]) - spatial - 1)
    return inputs


def calibrate_engine_description(description: dict[str, Any], calibrator: Any, dev: torch.device) -> None:
    """Fill the missing ``dynamic_range`` of the description's tensors from ``calibrator``, and hand
    a calibrator that takes them the per-channel maxima and the least-squared-error ranges of every
    convolution's input.

    Raises ``BuildError`` with a one-line message when calibration cannot run.
    """
    tensors = description["tensors"]
    names = [t["name"] for t in tensors]
    receiver = getattr(calibrator, "write_channel_maxima", None)
    range_receiver = getattr(calibrator, "write_mse_ranges", None)
    gemm_inputs = convolution_inputs(description) if receiver is not None or range_receiver is not None else {}
    histograms: dict[str, AbsHistogram] = {}
    channels = ChannelMaxima(dict(gemm_inputs.values())) if receiver is not None and gemm_inputs else None
    input_slots = {tensors[slot]["name"]: slot for slot in description["inputs"]}
    plans: list[Any] = []  # built on the first batch: a build that reads a cache needs none

    def run_fp32(feeds: dict[str, torch.Tensor], observe: Callable[[str, torch.Tensor], None]) -> None:
        if not plans:
            plans.append(reference_plan(load_graph(description), dev))
        plan = plans[0]
        buffers: list[Any] = [None] * plan.num_slots
        for slot, value in plan.constants.items():
            buffers[slot] = value
            observe(names[slot], value)
        for name, value in feeds.items():
            buffers[input_slots[name]] = value
        # Observed when produced, a tensor is dropped after its last reader: a large batch holds only
        # the tensors still to be read, not every tensor of the network.
        last_reader = {slot: index for index, step in enumerate(plan.steps) for slot in step.inputs}
        for index, step in enumerate(plan.steps):
            results = step.run(*[buffers[i] for i in step.inputs])
            for slot, value in zip(step.outputs, results):
                buffers[slot] = value
                observe(names[slot], value)
            for slot in step.inputs:
                if last_reader[slot] == index and slot not in plan.constants:
                    buffers[slot] = None

    try:
        ranges = calibrate(_calibration_input_specs(description), calibrator, run_fp32, dev, channels=channels,
                           histograms=histograms)
        if channels is not None and channels.values:
            receiver({layer: channels.values[tensor].cpu().numpy() for layer, (tensor, _) in gemm_inputs.items()})
        if range_receiver is not None and histograms:
            range_receiver({tensor: mse_amax(histograms[tensor]) for tensor, _ in gemm_inputs.values()})
    except (CalibrationError, ValueError, OSError) as err:
        raise BuildError(f"INT8 calibration failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    for tensor in tensors:
        if tensor["dynamic_range"] is None and tensor["name"] in ranges:
            amax = float(ranges[tensor["name"]])
            tensor["dynamic_range"] = [-amax, amax]
