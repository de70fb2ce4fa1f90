"""Calibration: TensorRT's table format, the range algorithms, the calibration pass, BertCalibrator and
the packed calibrator of builder_varseqlen.py."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
import torch

import helpers.data_processing as dp
import helpers.tokenization as tokenization
from helpers import backend
from helpers.calibrator import BertCalibrator, BertPackedCalibrator, pack_sequences
from helpers.portable import calibration as cal
from helpers.portable.device import wrap_pointer
from helpers.portable.enums import DataType
from tests import squad_fixtures

# ---------------------------------------------------------------------------------------------
# Table format


def big_endian_hex(value: float) -> str:
    return struct.pack(">f", value).hex().lstrip("0") or "0"


def test_table_lines_are_header_then_big_endian_hex_scales():
    table = cal.write_calibration_table(
        {"embeddings_output": 2.54, "(Unnamed Layer* 7) [ElementWise]_output": 0.5},
        cal.CalibrationAlgoType.LEGACY_CALIBRATION,
    ).decode()
    lines = table.splitlines()
    assert re.fullmatch(r"TRT-\d+-LegacyCalibration", lines[0])
    assert lines[1] == "embeddings_output: " + big_endian_hex(np.float32(2.54 / 127))
    assert lines[2] == "(Unnamed Layer* 7) [ElementWise]_output: " + big_endian_hex(np.float32(0.5 / 127))
    assert table.endswith("\n") and len(lines) == 3


def test_reads_tables_written_by_tensorrt():
    # Lines in the shape TensorRT 7/8/10 writes them (header, then "name: hex" per tensor).
    text = "TRT-100300-EntropyCalibration2\ndata: 3c008912\n(Unnamed Layer* 0) [Convolution]_output: 404efcc8\n"
    algorithm, amax = cal.parse_calibration_table(text.encode())
    assert algorithm == "EntropyCalibration2"
    assert amax["data"] == pytest.approx(127 * struct.unpack(">f", bytes.fromhex("3c008912"))[0], rel=1e-12)
    assert amax["(Unnamed Layer* 0) [Convolution]_output"] == pytest.approx(
        127 * struct.unpack(">f", bytes.fromhex("404efcc8"))[0], rel=1e-12
    )


def test_table_round_trip_keeps_every_scale_bit():
    rng = np.random.default_rng(0)
    ranges = {f"l{i}_gelu": float(v) for i, v in enumerate(rng.uniform(1e-3, 50.0, size=40))}
    for algorithm in cal.CalibrationAlgoType:
        text = cal.write_calibration_table(ranges, algorithm)
        name, parsed = cal.parse_calibration_table(text)
        assert name == cal.TABLE_ALGORITHM_NAMES[algorithm]
        assert list(parsed) == list(ranges)
        for key, value in ranges.items():
            assert np.float32(parsed[key] / 127) == np.float32(value / 127)
        assert cal.write_calibration_table(parsed, algorithm) == text


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n\x1a\n\x00\x00binary",
        b"embeddings_output: 3c010204\n",
        b"TRT-100300-MadeUpCalibration\nx: 3c010204\n",
        b"TRT-100300-LegacyCalibration\nx 3c010204\n",
        b"TRT-100300-LegacyCalibration\nx: zz\n",
        b"TRT-100300-LegacyCalibration\nx: 7fc00000\n",  # NaN scale
    ],
)
def test_corrupt_tables_give_one_line_errors(data):
    with pytest.raises(cal.CalibrationError) as err:
        cal.parse_calibration_table(data, "cache.bin")
    assert "\n" not in str(err.value) and str(err.value).startswith("cache.bin: ")


# ---------------------------------------------------------------------------------------------
# Range algorithms


def histogram_of(*batches: torch.Tensor) -> cal.AbsHistogram:
    hist = cal.AbsHistogram()
    for batch in batches:
        hist.add(batch)
    return hist


def test_histogram_grows_with_later_batches_and_keeps_every_sample():
    small = torch.linspace(-1, 1, 1001)
    large = torch.tensor([300.0, -250.0])
    hist = histogram_of(small, large)
    assert hist.max == 300.0
    assert hist.counts.sum() == 1003
    assert hist.edges()[-1] >= 300.0 and len(hist.counts) <= 4 * cal.HISTOGRAM_BINS


def test_legacy_quantile_ignores_the_rarest_values():
    # 99,990 values spread over [0, 1) and 10 outliers at 100: the 0.9999 quantile is 1, not 100.
    bulk = torch.rand(99_990, generator=torch.Generator().manual_seed(0))
    outliers = torch.full((10,), 100.0)
    hist = histogram_of(bulk, outliers)
    assert cal.legacy_amax(hist, 0.9999, 1.0) == pytest.approx(1.0, abs=2 * hist.width)
    assert cal.legacy_amax(hist, 1.0, 1.0) == pytest.approx(100.0)
    assert cal.legacy_amax(hist, 1.0, 0.25) == pytest.approx(25.0)


def test_legacy_quantile_of_a_uniform_grid_matches_numpy():
    values = torch.linspace(0, 8, 100_001)
    hist = histogram_of(values)
    expected = float(np.quantile(values.numpy(), 0.999))
    assert cal.legacy_amax(hist, 0.999, 1.0) == pytest.approx(expected, abs=2 * hist.width)


def test_entropy_threshold_clips_far_outliers_but_keeps_the_bulk():
    gen = torch.Generator().manual_seed(1)
    bulk = torch.randn(200_000, generator=gen)
    outliers = torch.tensor([60.0, -55.0, 58.0])
    amax = cal.entropy_amax(histogram_of(bulk, outliers))
    assert 3.0 < amax < 20.0
    # Without outliers nothing is worth clipping much: a uniform distribution keeps its max.
    uniform = torch.rand(200_000, generator=gen) * 4.0
    assert cal.entropy_amax(histogram_of(uniform)) == pytest.approx(4.0, rel=0.05)


# ---------------------------------------------------------------------------------------------
# The calibration pass


class ListCalibrator(cal.IInt8LegacyCalibrator):
    """Hands over prepared CPU batches, like BertCalibrator does with its device buffers."""

    def __init__(self, batches, cache=None):
        super().__init__()
        self.batches = [{k: v.contiguous() for k, v in b.items()} for b in batches]
        self.cache = cache
        self.written: bytes | None = None
        self.requests = 0

    def get_batch(self, names):
        self.requests += 1
        if not self.batches:
            return None
        self.current = self.batches.pop(0)
        return [self.current[name].data_ptr() for name in names]

    def read_calibration_cache(self):
        return self.cache

    def write_calibration_cache(self, cache):
        self.written = bytes(cache)


def toy_network(feeds, observe):
    x = feeds["x"].float()
    observe("doubled", 2 * x)
    observe("index", torch.zeros(3, dtype=torch.int32))  # integer tensors are not calibrated


def test_calibrate_runs_batches_and_writes_the_table():
    batches = [{"x": torch.tensor([[0.5, -1.0]])}, {"x": torch.tensor([[3.0, 0.25]])}]
    calibrator = ListCalibrator(batches)
    specs = [("x", (1, 2), DataType.FLOAT)]
    ranges = cal.calibrate(specs, calibrator, toy_network, torch.device("cpu"))
    assert set(ranges) == {"x", "doubled"}
    hist_x = histogram_of(torch.tensor([0.5, -1.0]), torch.tensor([3.0, 0.25]))
    assert ranges["x"] == cal.legacy_amax(hist_x, 0.9999, 1.0)
    assert ranges["doubled"] == pytest.approx(6.0, rel=1e-3)
    name, table = cal.parse_calibration_table(calibrator.written)
    assert name == "LegacyCalibration" and table["doubled"] == pytest.approx(ranges["doubled"], rel=1e-6)

    # A second build with the cache reads it and asks for no batch.
    again = ListCalibrator([], cache=calibrator.written)
    assert cal.calibrate(specs, again, toy_network, torch.device("cpu")) == table
    assert again.requests == 0 and again.written is None


def test_calibrate_with_the_entropy_algorithm():
    class EntropyList(ListCalibrator):
        get_algorithm = cal.IInt8EntropyCalibrator2.get_algorithm

    gen = torch.Generator().manual_seed(3)
    values = torch.cat([torch.randn(1, 20_000, generator=gen), torch.tensor([[40.0]])], dim=1)
    calibrator = EntropyList([{"x": values}])
    ranges = cal.calibrate([("x", tuple(values.shape), DataType.FLOAT)], calibrator, toy_network, torch.device("cpu"))
    assert ranges["x"] == cal.entropy_amax(histogram_of(values)) and 3.0 < ranges["x"] < 10.0
    assert calibrator.written.startswith(b"TRT-") and calibrator.written.split(b"\n")[0].endswith(b"-EntropyCalibration2")


def int8_squared_error(values: torch.Tensor, amax: float) -> float:
    """Total squared error of TensorRT's symmetric INT8 quantization of ``values`` with range ``amax``."""
    step = amax / 127.0
    quantized = torch.clamp(torch.round(values / step), -128, 127) * step
    return float(((quantized - values) ** 2).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_mse_range_has_the_least_quantization_error_of_the_samples(seed):
    """A GELU-like tensor (most values near zero, a long tail): the histogram's least-squared-error
    range quantizes the samples themselves within 2 % of the best range found on them by brute force,
    far below both max |x| and a tenth of it."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.nn.functional.gelu(torch.randn(200_000, generator=generator, dtype=torch.float64) * 2.0 - 1.5)
    values[:20] *= 6.0
    chosen = cal.mse_amax(histogram_of(values[:100_000], values[100_000:]))
    peak = float(values.abs().max())
    best = min(int8_squared_error(values, peak * k / 2000) for k in range(1, 2001))
    assert int8_squared_error(values, chosen) <= 1.02 * best
    assert int8_squared_error(values, chosen) < min(int8_squared_error(values, peak), int8_squared_error(values, peak / 10))
    assert cal.mse_amax(cal.AbsHistogram()) == 0.0


def test_calibrate_hands_over_its_histograms():
    values = torch.tensor([[0.5, -4.0], [-2.0, 1.0]])
    histograms: dict[str, cal.AbsHistogram] = {}
    ranges = cal.calibrate([("x", (2, 2), DataType.FLOAT)], ListCalibrator([{"x": values}]), toy_network,
                           torch.device("cpu"), histograms=histograms)
    assert {"x", "doubled"} <= set(histograms) and histograms["doubled"].max == 8.0
    assert ranges["x"] == cal.amax_from_histogram(histograms["x"], ListCalibrator([]))


def test_calibrate_without_batches_fails():
    with pytest.raises(cal.CalibrationError, match="at least one batch"):
        cal.calibrate([("x", (1, 2), DataType.FLOAT)], ListCalibrator([]), toy_network, torch.device("cpu"))


def test_calibrate_collects_the_channel_maxima_it_is_asked_for():
    """Activation smoothing's statistics: max |x| per channel (axis 1 here) over all batches."""
    first, second = torch.tensor([[0.5, -4.0], [-2.0, 1.0]]), torch.tensor([[3.0, 0.25], [-1.0, -0.5]])
    channels = cal.ChannelMaxima({"doubled": 1})
    cal.calibrate([("x", (2, 2), DataType.FLOAT)], ListCalibrator([{"x": first}, {"x": second}]), toy_network,
                  torch.device("cpu"), channels=channels)
    assert set(channels.values) == {"doubled"}
    np.testing.assert_array_equal(channels.values["doubled"].numpy(), [6.0, 8.0])


# ---------------------------------------------------------------------------------------------
# BertCalibrator (on the portable backend)


CONTEXT = (
    "The Amazon rainforest covers much of the Amazon basin of South America. The basin spans "
    "seven million square kilometres, of which five and a half million are covered by forest."
)
QUESTIONS = [
    ("q1", "What does the Amazon rainforest cover?", ["much of the Amazon basin"]),
    ("q2", "How many square kilometres does the basin span?", ["seven million"]),
    ("q3", "How much of the basin is forest?", ["five and a half million"]),
]


@pytest.fixture
def squad_json(tmp_path):
    qas = [squad_fixtures.make_qa(qid, question, answers) for qid, question, answers in QUESTIONS]
    return squad_fixtures.write_squad_file(tmp_path / "calib.json", [(CONTEXT, qas)])


@pytest.fixture
def portable_backend(monkeypatch):
    monkeypatch.setenv("DEMOBERT_DEVICE", "cpu")
    previous = backend.backend_name()
    backend.select_backend("portable")
    yield
    backend.select_backend(previous)


def make_calibrator(squad_json, cache_file, num_inputs=3, seq=64):
    return BertCalibrator(squad_json, squad_fixtures.minilm_vocab_file(), str(cache_file), 1, seq, num_inputs)


def test_bert_calibrator_feeds_first_features_in_file_order(portable_backend, squad_json, tmp_path, capsys):
    calibrator = make_calibrator(squad_json, tmp_path / "cache")
    assert calibrator.get_batch_size() == 1
    assert calibrator.get_quantile() == 0.9999 and calibrator.get_regression_cutoff() == 1.0
    assert calibrator.read_calibration_cache() is None
    tokenizer = tokenization.BertTokenizer(squad_fixtures.minilm_vocab_file(), do_lower_case=True)
    names = ["input_mask", "input_ids", "segment_ids"]  # any order: buffers follow the names
    for example in dp.read_squad_json(squad_json):
        pointers = calibrator.get_batch(names)
        expected = dp.convert_example_to_features(example.doc_tokens, example.question_text, tokenizer, 64, 128, 64)[0]
        for name, pointer in zip(names, pointers):
            got = wrap_pointer(pointer, (1, 64), DataType.INT32, torch.device("cpu")).numpy()[0]
            np.testing.assert_array_equal(got, getattr(expected, name))
    assert calibrator.get_batch(names) is None
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "Calibrating batch 0, containing 1 sentences",
        "Calibrating index 3 batch size 1 exceed max input limit 3 sentences",
    ]


def test_bert_calibrator_cache_is_written_whole_and_read_back(portable_backend, squad_json, tmp_path):
    cache_file = tmp_path / "BertSquadL6H32A12S64CalibCache"
    calibrator = make_calibrator(squad_json, cache_file)
    table = cal.write_calibration_table({"embeddings_output": 3.0}, cal.CalibrationAlgoType.LEGACY_CALIBRATION)
    calibrator.write_calibration_cache(memoryview(table))
    assert cache_file.read_bytes() == table
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(cache_file.name)] == [cache_file.name]
    # A later build reads the cache and needs no SQuAD file.
    again = make_calibrator(str(tmp_path / "missing.json"), cache_file)
    assert again.read_calibration_cache() == table


def test_bert_calibrator_rejects_bad_input(portable_backend, squad_json, tmp_path):
    with pytest.raises(cal.CalibrationError, match=r"has 3 questions, fewer than the 5") as err:
        make_calibrator(squad_json, tmp_path / "cache", num_inputs=5)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="cannot read file"):
        make_calibrator(str(tmp_path / "missing.json"), tmp_path / "cache")
    corrupt = tmp_path / "corrupt_cache"
    corrupt.write_bytes(b"TRT-100300-LegacyCalibration\nembeddings_output 3c010204\n")
    with pytest.raises(cal.CalibrationError, match="corrupt_cache: line 2"):
        make_calibrator(squad_json, corrupt)
    assert corrupt.read_bytes().startswith(b"TRT-")
    with pytest.raises(cal.CalibrationError):
        make_calibrator(squad_json, tmp_path / "cache").write_calibration_cache(b"not a table")
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------
# Packed batches (builder_varseqlen.py)


def test_pack_sequences_fills_every_batch_exactly():
    # First-fit decreasing: 5 and 4 open batches, 3 fits beside 4, 2 beside 5.
    assert pack_sequences([5, 3, 4, 2], 7) == [[(0, 5), (3, 2)], [(2, 4), (1, 3)]]
    # A batch left short repeats its own sequences, the last one cut to fit.
    assert pack_sequences([3], 7) == [[(0, 3), (0, 3), (0, 1)]]
    assert pack_sequences([6, 6], 7) == [[(0, 6), (0, 1)], [(1, 6), (1, 1)]]
    assert pack_sequences([2, 2, 3], 7) == [[(2, 3), (0, 2), (1, 2)]]
    with pytest.raises(ValueError, match="cannot pack sequences of 1..8 tokens into 7"):
        pack_sequences([1, 8], 7)


def packed_calibrator(squad_json, cache_file, tokens, num_inputs=3, seq=64):
    return BertPackedCalibrator(squad_json, squad_fixtures.minilm_vocab_file(), cache_file, tokens, seq, num_inputs)


@pytest.mark.parametrize("tokens", [64, 1000])
def test_packed_calibrator_feeds_the_real_tokens_of_the_first_features(portable_backend, squad_json, tmp_path, tokens, capsys):
    """The padded calibrator's features without their padding, packed into batches of ``tokens``
    tokens (or of all of them, when they have fewer); ``cu_seqlens`` ends with empty sequences in a
    batch of fewer sequences than the fullest."""

    tokenizer = tokenization.BertTokenizer(squad_fixtures.minilm_vocab_file(), do_lower_case=True)
    windows = []
    for example in dp.read_squad_json(squad_json):
        feature = dp.convert_example_to_features(example.doc_tokens, example.question_text, tokenizer, 64, 128, 64)[0]
        length = int(feature.input_mask.sum())
        windows.append((feature.input_ids[:length], feature.segment_ids[:length]))
    total = sum(len(ids) for ids, _ in windows)
    calibrator = packed_calibrator(squad_json, str(tmp_path / "cache"), tokens)
    assert calibrator.tokens == min(tokens, total) and calibrator.get_batch_size() == 1
    batches = pack_sequences([len(ids) for ids, _ in windows], calibrator.tokens)
    assert calibrator.max_sequences == max(len(batch) for batch in batches)
    if tokens == 1000:
        assert len(batches) == 1 and [taken for _, taken in batches[0]] == sorted((len(i) for i, _ in windows), reverse=True)
    names = ["cu_seqlens", "input_ids", "max_seqlen", "segment_ids"]
    for batch in batches:
        pointers = dict(zip(names, calibrator.get_batch(names)))

        def read(name, count):
            return wrap_pointer(pointers[name], (count,), DataType.INT32, torch.device("cpu")).numpy().copy()

        lengths = [taken for _, taken in batch]
        expected_cu = np.cumsum([0, *lengths, *[0] * (calibrator.max_sequences - len(batch))])
        np.testing.assert_array_equal(read("cu_seqlens", calibrator.max_sequences + 1), expected_cu)
        np.testing.assert_array_equal(read("input_ids", calibrator.tokens), np.concatenate([windows[i][0][:n] for i, n in batch]))
        np.testing.assert_array_equal(read("segment_ids", calibrator.tokens), np.concatenate([windows[i][1][:n] for i, n in batch]))
    assert calibrator.get_batch(names) is None
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"Calibrated on 3 sentences in {len(batches)} batches of {calibrator.tokens} tokens"
    )


def test_packed_calibrator_without_a_cache_file_writes_none(portable_backend, squad_json, tmp_path):
    """Without a cache file (activation smoothing's statistics pass) every build calibrates and no table is kept."""
    calibrator = packed_calibrator(squad_json, None, 64)
    table = cal.write_calibration_table({"embeddings_output": 3.0}, cal.CalibrationAlgoType.LEGACY_CALIBRATION)
    assert calibrator.read_calibration_cache() is None
    calibrator.write_calibration_cache(table)
    assert [p.name for p in tmp_path.iterdir()] == ["calib.json"] and calibrator.read_calibration_cache() == table


def test_packed_calibrator_rejects_batches_shorter_than_a_sequence(portable_backend, squad_json, tmp_path):
    with pytest.raises(cal.CalibrationError, match="batches of at least one sequence"):
        packed_calibrator(squad_json, str(tmp_path / "cache"), 32)
