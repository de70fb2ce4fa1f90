"""The INT8 post-training calibrator of ``builder.py`` (docs/SPEC.md "Calibration").

``BertCalibrator`` feeds TensorRT (or the portable engine, which implements the same calibrator
interface) one SQuAD question per batch: the first feature of each example, in file order,
until ``num_inputs`` examples were used.  The calibration table is cached in ``cache_file``
(TensorRT's text format, see ``helpers.portable.calibration``); when that file exists, the
builder reads it instead of calibrating again.  ``BertEntropyCalibrator`` and ``BertMinMaxCalibrator``
feed the same batches to TensorRT's entropy algorithm (``IInt8EntropyCalibrator2``) or its max |x|
(``IInt8MinMaxCalibrator``) instead of the legacy quantile.

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
from builder_utils import write_file_atomically
from helpers import hf_tokenization
from helpers.backend import backend_name, trt
from helpers.files import CACHE_FILE_MAX_BYTES, read_limited
from helpers.model_info import ModelInfo
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
    from helpers.portable import get_device

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


class _SquadBatches:
    """SQuAD calibration batches and the cache file; the calibrator classes add TensorRT's base."""

    def __init__(
        self,
        squad_json: str,
        vocab_file: str,
        cache_file: str,
        batch_size: int,
        max_seq_length: int,
        num_inputs: int,
        model: ModelInfo | None = None,
    ) -> None:
        # TensorRT's calibrator base, next in the subclass's MRO, is initialized first.
        super().__init__()
        if batch_size < 1 or max_seq_length < 1 or num_inputs < 1:
            raise CalibrationError(
                f"calibration needs positive batch size, sequence length and --calib-num "
                f"(got {batch_size}, {max_seq_length}, {num_inputs})"
            )
        self.cache_file = cache_file
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.num_inputs = num_inputs
        self.current_index = 0
        self.cache = read_calibration_cache_file(cache_file)
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
        device = calibration_device()
        self.device_inputs = {
            name: torch.zeros(batch_size * max_seq_length, dtype=torch.int32, device=device) for name in INPUT_NAMES
        }

    def free(self) -> None:
        self.device_inputs = {}

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
        assert self.tokenizer is not None
        features = []
        for example in self.data[self.current_index : self.current_index + self.batch_size]:
            features.append(
                hf_tokenization.question_features(
                    self.tokenizer,
                    example.doc_tokens,
                    example.question_text,
                    self.max_seq_length,
                    DOC_STRIDE,
                    MAX_QUERY_LENGTH,
                    self.model.token_types,
                )[0]
            )
        for name in INPUT_NAMES:
            host = np.concatenate([getattr(feature, name) for feature in features]).astype(np.int32)
            self.device_inputs[name].copy_(torch.from_numpy(host))
        self.current_index += self.batch_size
        unknown = [name for name in names if name not in self.device_inputs]
        if unknown:
            raise CalibrationError(f"the calibrator has no data for network input(s) {', '.join(unknown)}")
        return [self.device_inputs[name].data_ptr() for name in names]

    def read_calibration_cache(self) -> bytes | None:
        return self.cache

    def write_calibration_cache(self, cache: bytes | memoryview) -> None:
        data = bytes(cache)
        parse_calibration_table(data, "the calibration table produced by this build")
        write_file_atomically(self.cache_file, data)
        self.cache = data


class BertCalibrator(_SquadBatches, trt.IInt8LegacyCalibrator):  # type: ignore[misc]
    """The demo's legacy calibrator: ranges from the 0.9999 quantile of |x|, cutoff 1.0."""

    def get_quantile(self) -> float:
        return LEGACY_QUANTILE

    def get_regression_cutoff(self) -> float:
        return LEGACY_REGRESSION_CUTOFF

    def read_histogram_cache(self, length: int = 0) -> None:
        return None

    def write_histogram_cache(self, data: object, length: int = 0) -> None:
        return None


class BertEntropyCalibrator(_SquadBatches, trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
    """The same batches with entropy (KL divergence) calibration instead of the legacy quantile."""


class BertMinMaxCalibrator(_SquadBatches, trt.IInt8MinMaxCalibrator):  # type: ignore[misc]
    """The same batches with min-max calibration: each range is the largest |x| seen."""
