"""The portable engine file: header, round trip, and refusal of truncated, corrupt or foreign data."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import helpers.portable as trt
from helpers.portable import engine_file
from portable_bert import TinyConfig, build_fixed_network, random_batch, random_weights, run_engine

CFG = TinyConfig(hidden=40, heads=5, intermediate=64, layers=1)


@pytest.fixture
def plan(logger):
    network, config = build_fixed_network(trt, trt.Builder(logger), random_weights(CFG), CFG, [1, 2], [8], fp16=True)
    config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    network.get_layer(5).get_output(0).set_dynamic_range(-3.0, 3.0)
    serialized = trt.Builder(logger).build_serialized_network(network, config)
    assert serialized is not None
    return serialized


def test_serialized_engine_is_host_memory(plan, tmp_path):
    assert isinstance(plan, trt.IHostMemory) and plan.nbytes == len(plan) > 0
    path = tmp_path / "bert.engine"
    with open(path, "wb") as f:
        f.write(plan)
    assert path.read_bytes() == bytes(plan)
    assert trt.is_portable_engine(path.read_bytes()) and plan.startswith(trt.ENGINE_MAGIC)


def test_header_names_backend_version_build_options_and_network(plan):
    header = trt.read_engine_header(plan)
    assert header["backend"] == "portable" and header["format_version"] == trt.FORMAT_VERSION
    assert header["build"]["flags"] == ["FP16", "SPARSE_WEIGHTS"] and header["build"]["executes_as"] == "FP16"
    assert header["profiles"][1]["input_ids"] == [[1, 8], [2, 8], [2, 8]]
    names = [t["name"] for t in header["tensors"]]
    assert "embeddings_output" in names and "l0_gelu" in names and "logits_out" in names
    ranges = [t["dynamic_range"] for t in header["tensors"] if t["dynamic_range"] is not None]
    assert ranges == [[-3.0, 3.0]]
    plugins = [layer["params"] for layer in header["layers"] if layer["kind"] == "plugin"]
    assert [(p["plugin"], p["version"]) for p in plugins] == [
        ("CustomEmbLayerNormPluginDynamic", "1"),
        ("CustomQKVToContextPluginDynamic", "1"),
        ("CustomSkipLayerNormPluginDynamic", "1"),
        ("CustomSkipLayerNormPluginDynamic", "1"),
    ]
    # Fields are stored with their names and PluginFieldType tags; arrays live in the payload.
    fields = {name: tag for name, tag, _ in plugins[1]["fields"]}
    assert fields == {n: int(trt.PluginFieldType.INT32) for n in ("type_id", "hidden_size", "num_heads", "has_mask")}


def test_round_trip_gives_identical_outputs(logger, device, plan):
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    again = runtime.deserialize_cuda_engine(engine.serialize())
    assert bytes(engine.serialize()) == bytes(plan)
    ids, segs, mask = random_batch(CFG, 2, 8)
    data = {"input_ids": ids, "segment_ids": segs, "input_mask": mask}
    first = run_engine(trt, engine, data, device, profile=1)["logits_out"]
    second = run_engine(trt, again, data, device, profile=1)["logits_out"]
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first).all()


def _refused(logger, data):
    before = len(logger.records)
    assert trt.Runtime(logger).deserialize_cuda_engine(data) is None
    new = logger.records[before:]
    assert len(new) == 1 and new[0][0] == trt.Logger.ERROR
    return new[0][1]


def test_truncated_engines_are_refused(logger, plan):
    data = bytes(plan)
    for cut in (0, 5, len(trt.ENGINE_MAGIC) + 3, 100, len(data) // 2, len(data) - 1):
        reason = _refused(logger, data[:cut])
        assert ("truncated" in reason) or ("empty" in reason) or ("magic" in reason)
    assert "trailing" in _refused(logger, data + b"\0")


def test_corrupt_engines_are_refused(logger, plan):
    data = bytearray(plan)
    for offset in (len(trt.ENGINE_MAGIC) + 30, len(data) // 3, len(data) - 2):
        corrupt = bytearray(data)
        corrupt[offset] ^= 0x10
        assert "checksum" in _refused(logger, bytes(corrupt))


def test_other_format_versions_are_refused(logger, plan):
    data = bytearray(plan)
    struct.pack_into("<I", data, len(trt.ENGINE_MAGIC), trt.FORMAT_VERSION + 1)
    assert "format version" in _refused(logger, bytes(data))
    with pytest.raises(trt.EngineFormatError, match="format version"):
        trt.read_engine_header(bytes(data))


def test_foreign_files_are_refused(logger):
    assert "TensorRT plan" in _refused(logger, b"ftrt" + bytes(200))
    assert "magic" in _refused(logger, b'{"not": "an engine"}')
    assert "empty" in _refused(logger, b"")
    assert not trt.is_portable_engine(b"ftrt" + bytes(20))


def test_well_formed_file_with_a_bad_network_is_refused(logger):
    blob = engine_file.write_engine({
        "producer": "test", "build": {}, "profiles": [], "inputs": [], "outputs": [], "tensors": [],
        "layers": [{"kind": "mystery", "name": "x", "type": 0, "inputs": [], "outputs": [], "params": {}}],
    })
    assert "mystery" in _refused(logger, blob)
