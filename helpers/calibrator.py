"""The INT8 post-training calibrators of ``builder.py`` (docs/SPEC.md "Calibration") and
``builder_varseqlen.py``.

``BertCalibrator`` feeds TensorRT (or the portable engine, which implements the same calibrator
interface) one SQuAD question per batch: the first feature of each example, in file order,
until ``num_inputs`` examples were used.  The calibration table is cached in ``cache_file``
(TensorRT's text format, see ``helpers.portable.calibration``); when that file exists, the
builder reads it instead of calibrating again.  ``BertEntropyCalibrator`` and ``BertMinMaxCalibrator``
feed the same batches to TensorRT's entropy algorithm (``IInt8EntropyCalibrator2``) or its max |x|
(``IInt8MinMaxCalibrator``) instead of the legacy quantile.  ``BertPackedCalibrator`` feeds the
same first features without their padding, packed (``pack_sequences``), to the variable-length
network.  ``BertChannelStatistics`` / ``PackedChannelStatistics`` run the same batches, without a
cache, for the per-channel maxima of activation smoothing (``helpers/smoothing.py``).

Device buffers are PyTorch tensors on the device the backend runs on; ``get_batch`` returns
their addresses in the order of the names it is given.  Bad input (a missing or short SQuAD
file, a vocabulary that cannot be read, a corrupt cache) raises ``CalibrationError`` or the
reader's own ``ValueError``, each with a one-line message, before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

import helpers.data_processing as dp
import helpers.tokenization as tokenization
from helpers import hf_tokenization
from helpers.backend import backend_name, trt
from helpers.files import CACHE_FILE_MAX_BYTES, read_limited, write_bytes_atomically
from helpers.model_info import ModelInfo
from helpers.portable import get_device
from helpers.portable.calibration import (
    LEGACY_QUANTILE,
    LEGACY_REGRESSION_CUTOFF,
    CalibrationError,
    parse_calibration_table,
)

INPUT_NAMES = ("input_ids", "segment_ids", "input_mask")
DOC_STRIDE = 128
MAX_QUERY_LENGTH = 64


def calibration_device() -> torch.device:
    """Where the backend reads calibration batches: the GPU for TensorRT, the runtime device otherwise."""
    if backend_name() == "tensorrt":
        return torch.device("cuda")
    return get_device()


def read_calibration_cache_file(cache_file: str) -> bytes | None:
    """The cache bytes, checked to be a calibration table; None when there is no cache yet."""
    if not os.path.exists(cache_file):
        return None
    try:
        data = read_limited(cache_file, CACHE_FILE_MAX_BYTES, "calibration cache")
    except OSError as err:
        raise CalibrationError(f"{cache_file}: cannot read calibration cache ({err.strerror or err})") from None
    parse_calibration_table(data, cache_file)
    return data


class _SquadQuestions:
    """The calibration questions of a SQuAD file and the cache file; subclasses make the batches,
    the calibrator classes add TensorRT's base.  ``cache_file`` None: no cache is read or written
    (every build calibrates).  ``model``: the tokenizer kind and token types of the model."""

    def __init__(
        self,
        squad_json: str,
        vocab_file: str,
        cache_file: str | None,
        max_seq_length: int,
        num_inputs: int,
        model: ModelInfo | None = None,
    ) -> None:
        # TensorRT's calibrator base, next in the subclass's MRO, is initialized first.
        super().__init__()
        self.cache_file = cache_file
        self.max_seq_length = max_seq_length
        self.num_inputs = num_inputs
        self.cache = None if cache_file is None else read_calibration_cache_file(cache_file)
        self.data: list[dp.Example] = []
        self.model = model or ModelInfo()
        self.tokenizer: tokenization.BertTokenizer | hf_tokenization.OffsetTokenizer | None = None
        if self.cache is None:
            # Only a calibration that will really run needs the SQuAD file and the vocabulary.
            self.data = dp.read_squad_json(squad_json)
            if len(self.data) < num_inputs:
                raise CalibrationError(
                    f"{squad_json}: has {len(self.data)} questions, fewer than the {num_inputs} "
                    f"calibration sentences asked for (-n/--calib-num)"
                )
            self.tokenizer = hf_tokenization.load_tokenizer(vocab_file, self.model, tokenization.BertTokenizer)
        self.device_inputs: dict[str, torch.Tensor] = {}

    def first_feature(self, index: int) -> dp.Feature:
        """The first window of question ``index`` (file order)."""
        assert self.tokenizer is not None
        example = self.data[index]
        return hf_tokenization.question_features(
            self.tokenizer,
            example.doc_tokens,
            example.question_text,
            self.max_seq_length,
            DOC_STRIDE,
            MAX_QUERY_LENGTH,
            self.model.token_types,
        )[0]

    def free(self) -> None:
        self.device_inputs = {}

    def get_batch_size(self) -> int:
        return 1

    def pointers(self, names: Sequence[str]) -> list[int]:
        unknown = [name for name in names if name not in self.device_inputs]
        if unknown:
            raise CalibrationError(f"the calibrator has no data for network input(s) {', '.join(unknown)}")
        return [self.device_inputs[name].data_ptr() for name in names]

    def read_calibration_cache(self) -> bytes | None:
        return self.cache

    def write_calibration_cache(self, cache: bytes | memoryview) -> None:
        data = bytes(cache)
        parse_calibration_table(data, "the calibration table produced by this build")
        if self.cache_file is not None:
            write_bytes_atomically(self.cache_file, data)
        self.cache = data


class _SquadBatches(_SquadQuestions):
    """``batch_size`` padded questions per batch (``input_ids``, ``segment_ids``, ``input_mask``)."""

    def __init__(
        self,
        squad_json: str,
        vocab_file: str,
        cache_file: str | None,
        batch_size: int,
        max_seq_length: int,
        num_inputs: int,
        model: ModelInfo | None = None,
    ) -> None:
        if batch_size < 1 or max_seq_length < 1 or num_inputs < 1:
            raise CalibrationError(
                f"calibration needs positive batch size, sequence length and --calib-num "
                f"(got {batch_size}, {max_seq_length}, {num_inputs})"
            )
        super().__init__(squad_json, vocab_file, cache_file, max_seq_length, num_inputs, model)
        self.batch_size = batch_size
        self.current_index = 0
        device = calibration_device()
        self.device_inputs = {
            name: torch.zeros(batch_size * max_seq_length, dtype=torch.int32, device=device) for name in INPUT_NAMES
        }

    def get_batch_size(self) -> int:
        return self.batch_size

    def get_batch(self, names: Sequence[str]) -> list[int] | None:
        if self.current_index + self.batch_size > self.num_inputs:
            print(
                f"Calibrating index {self.current_index} batch size {self.batch_size} "
                f"exceed max input limit {self.num_inputs} sentences"
            )
            return None
        current_batch = self.current_index // self.batch_size
        if current_batch % 10 == 0:
            print(f"Calibrating batch {current_batch}, containing {self.batch_size} sentences")
        features = [self.first_feature(i) for i in range(self.current_index, self.current_index + self.batch_size)]
        for name in INPUT_NAMES:
            host = np.concatenate([getattr(feature, name) for feature in features]).astype(np.int32)
            self.device_inputs[name].copy_(torch.from_numpy(host))
        self.current_index += self.batch_size
        return self.pointers(names)


def pack_sequences(lengths: Sequence[int], tokens: int) -> list[list[tuple[int, int]]]:
    """Batches of exactly ``tokens`` tokens from sequences of ``lengths`` (each at most ``tokens``),
    as (sequence index, tokens taken from its start) per packed sequence.

    First-fit decreasing: longest first, each sequence whole into the first batch with room for it.
    A batch left short is filled by its own sequences again, in order, the last one cut to fit.
    """
    if not lengths or max(lengths) > tokens or min(lengths) < 1:
        raise ValueError(f"cannot pack sequences of {min(lengths, default=0)}..{max(lengths, default=0)} tokens into {tokens}")
    members: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        batch = next((b for b, free in enumerate(room) if lengths[index] <= free), None)
        if batch is None:
            members.append([])
            room.append(tokens)
            batch = len(room) - 1
        members[batch].append(index)
        room[batch] -= lengths[index]
    batches = []
    for indices, free in zip(members, room):
        packed = [(index, lengths[index]) for index in indices]
        repeat = 0
        while free > 0:
            index = indices[repeat % len(indices)]
            packed.append((index, min(lengths[index], free)))
            free -= packed[-1][1]
            repeat += 1
        batches.append(packed)
    return batches


class _PackedSquadBatches(_SquadQuestions):
    """The questions' first windows without padding, packed (``pack_sequences``) into batches of
    ``max_tokens`` tokens, or of all their tokens when they have fewer: ``input_ids``,
    ``segment_ids``, ``cu_seqlens`` (its length fixed by the batch of most sequences; the others end
    with empty sequences) and the dummy ``max_seqlen``."""

    def __init__(
        self,
        squad_json: str,
        vocab_file: str,
        cache_file: str | None,
        max_tokens: int,
        max_seq_length: int,
        num_inputs: int,
        model: ModelInfo | None = None,
    ) -> None:
        if max_seq_length < 1 or num_inputs < 1 or max_tokens < max_seq_length:
            raise CalibrationError(
                f"packed calibration needs a positive sequence length and --calib-num and batches of at least one "
                f"sequence (got {max_seq_length}, {num_inputs}, {max_tokens} tokens)"
            )
        super().__init__(squad_json, vocab_file, cache_file, max_seq_length, num_inputs, model)
        self.tokens = max_tokens
        self.current_batch = 0
        self.sequences: list[tuple[np.ndarray, np.ndarray]] = []
        self.batches: list[list[tuple[int, int]]] = []
        if self.cache is None:
            for index in range(num_inputs):
                feature = self.first_feature(index)
                length = int(np.sum(feature.input_mask))
                self.sequences.append((np.asarray(feature.input_ids[:length]), np.asarray(feature.segment_ids[:length])))
            self.tokens = min(max_tokens, sum(len(ids) for ids, _ in self.sequences))
            self.batches = pack_sequences([len(ids) for ids, _ in self.sequences], self.tokens)
        device = calibration_device()
        self.device_inputs = {
            "input_ids": torch.zeros(self.tokens, dtype=torch.int32, device=device),
            "segment_ids": torch.zeros(self.tokens, dtype=torch.int32, device=device),
            "cu_seqlens": torch.zeros(self.max_sequences + 1, dtype=torch.int32, device=device),
            "max_seqlen": torch.zeros(max_seq_length, dtype=torch.int32, device=device),
        }

    @property
    def max_sequences(self) -> int:
        """The most sequences a batch holds: ``cu_seqlens`` has one more entry (1 without batches)."""
        return max((len(batch) for batch in self.batches), default=1)

    def get_batch(self, names: Sequence[str]) -> list[int] | None:
        if self.current_batch == len(self.batches):
            print(f"Calibrated on {self.num_inputs} sentences in {len(self.batches)} batches of {self.tokens} tokens")
            return None
        batch = self.batches[self.current_batch]
        if self.current_batch % 10 == 0:
            print(f"Calibrating batch {self.current_batch}, containing {len(batch)} sentences")
        ids = np.concatenate([self.sequences[index][0][:taken] for index, taken in batch])
        segments = np.concatenate([self.sequences[index][1][:taken] for index, taken in batch])
        bounds = np.cumsum([0] + [taken for _, taken in batch])
        cu_seqlens = np.concatenate([bounds, np.full(self.max_sequences + 1 - len(bounds), self.tokens)])
        for name, host in (("input_ids", ids), ("segment_ids", segments), ("cu_seqlens", cu_seqlens)):
            self.device_inputs[name].copy_(torch.from_numpy(host.astype(np.int32)))
        self.current_batch += 1
        return self.pointers(names)


class _ChannelStatistics:
    """What activation smoothing (``helpers/smoothing.py``) reads: the portable engine hands it the
    largest |x| of each input channel of every convolution over the batches, by layer name, and
    the INT8 range of least squared error of each convolution's input, by tensor name
    (``helpers.portable.calibration``)."""

    channel_maxima: dict[str, np.ndarray] = {}
    mse_ranges: dict[str, float] = {}

    def write_channel_maxima(self, maxima: dict[str, np.ndarray]) -> None:
        self.channel_maxima = dict(maxima)

    def write_mse_ranges(self, ranges: dict[str, float]) -> None:
        self.mse_ranges = dict(ranges)


class _LegacyParameters:
    """The demo's legacy calibrator parameters: the 0.9999 quantile of |x|, cutoff 1.0."""

    def get_quantile(self) -> float:
        return LEGACY_QUANTILE

    def get_regression_cutoff(self) -> float:
        return LEGACY_REGRESSION_CUTOFF

    def read_histogram_cache(self, length: int = 0) -> None:
        return None

    def write_histogram_cache(self, data: object, length: int = 0) -> None:
        return None


class BertCalibrator(_LegacyParameters, _SquadBatches, trt.IInt8LegacyCalibrator):  # type: ignore[misc]
    """The demo's legacy calibrator: ranges from the 0.9999 quantile of |x|, cutoff 1.0."""


class BertEntropyCalibrator(_SquadBatches, trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
    """The same batches with entropy (KL divergence) calibration instead of the legacy quantile."""


class BertMinMaxCalibrator(_SquadBatches, trt.IInt8MinMaxCalibrator):  # type: ignore[misc]
    """The same batches with min-max calibration: each range is the largest |x| seen."""


class BertPackedCalibrator(_LegacyParameters, _PackedSquadBatches, trt.IInt8LegacyCalibrator):  # type: ignore[misc]
    """The legacy calibrator on packed batches, for builder_varseqlen.py."""


class BertChannelStatistics(_ChannelStatistics, _SquadBatches, trt.IInt8MinMaxCalibrator):  # type: ignore[misc]
    """Padded batches for the per-channel maxima of activation smoothing (no cache: ``cache_file`` None)."""


class PackedChannelStatistics(_ChannelStatistics, _PackedSquadBatches, trt.IInt8MinMaxCalibrator):  # type: ignore[misc]
    """Packed batches for the per-channel maxima of activation smoothing (no cache: ``cache_file`` None)."""
