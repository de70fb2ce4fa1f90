"""Crafted portable engines whose checksum is valid but whose header is not what the builder
writes: every one is refused when the header is read, with one line naming what is wrong (never a
traceback, never "built by another TensorRT version?")."""

from __future__ import annotations

import copy
import json
import struct
import zlib

import pytest

import helpers.portable as trt
import inference
from engines import SEQ_LEN, run_main, tiny_engine, tiny_model_dir
from helpers.portable import engine_file
from helpers.portable.enums import DataType


@pytest.fixture(scope="module")
def engine_bytes(tmp_path_factory) -> bytes:
    return tiny_engine(tmp_path_factory).read_bytes()


def with_header(data: bytes, header) -> bytes:
    """``data`` with its JSON header replaced by ``header`` (any JSON text or value), the payload
    kept and the preamble's sizes and checksum recomputed: only the schema can tell."""
    start = len(trt.ENGINE_MAGIC)
    version, header_len, payload_len, _ = struct.unpack_from("<IQQI", data, start)
    payload = data[engine_file.PREAMBLE_BYTES + header_len :]
    text = (header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))).encode()
    crc = zlib.crc32(payload, zlib.crc32(text))
    return trt.ENGINE_MAGIC + struct.pack("<IQQI", version, len(text), payload_len, crc) + text + payload


def header_of(data: bytes) -> dict:
    start = len(trt.ENGINE_MAGIC)
    header_len = struct.unpack_from("<IQQI", data, start)[1]
    return json.loads(data[engine_file.PREAMBLE_BYTES : engine_file.PREAMBLE_BYTES + header_len])


def first_layer(header: dict, kind: str) -> dict:
    return next(layer for layer in header["layers"] if layer["kind"] == kind)


def refusal(data: bytes) -> str:
    with pytest.raises(trt.EngineFormatError) as err:
        trt.read_engine_header(data)
    message = str(err.value)
    assert "\n" not in message and message.startswith("corrupt portable engine: "), message
    return message


def test_the_builders_header_passes_and_a_rewritten_copy_too(engine_bytes):
    assert trt.read_engine_header(engine_bytes)["backend"] == "portable"
    assert with_header(engine_bytes, header_of(engine_bytes)) == engine_bytes


def deep(levels: int):
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def set_layer(kind, key, value, params=False):
    def change(header):
        layer = first_layer(header, kind)
        (layer["params"] if params else layer)[key] = value
    return change


# Case: (change, expected message part).  ``change(header)`` edits a copy of the real header in
# place and returns None, or returns the JSON value to write instead.
CASES = {
    # The document itself.
    "a list": (lambda h: [h], "the header is a JSON list, not an object"),
    "a number": (lambda h: 7, "the header is a JSON int, not an object"),
    "nested too deep": (lambda h: {**h, "producer": deep(40)}, "the header nests deeper than 16 levels"),
    "no tensors": (lambda h: {k: v for k, v in h.items() if k != "tensors"}, "header: missing 'tensors'"),
    "layers an object": (lambda h: {**h, "layers": {}}, "header: 'layers' must be a JSON list"),
    # The array table and references into it.
    "array past the payload": (
        lambda h: h["arrays"][0].update(offset=10**12), "arrays[0]: 32 x 4 bytes at offset 1000000000000 run past the"),
    "object dtype": (lambda h: h["arrays"][0].update(dtype="|O"), "arrays[0]: dtype '|O' is not a numeric dtype"),
    "unknown dtype": (lambda h: h["arrays"][0].update(dtype="<q9"), "arrays[0]: unknown dtype '<q9'"),
    "negative dimension": (lambda h: h["arrays"][0].update(shape=[-4]), "arrays[0]: 'shape' must be a list of at most 8 sizes"),
    "dangling array reference": (
        set_layer("convolution", "kernel", {"__array__": 10**6}, params=True), "bad array reference {'__array__': 1000000}"),
    # Tensor slots.
    "layer input out of range": (set_layer("convolution", "inputs", [999]), "tensor slot 999 is out of range (the engine has"),
    "layer output out of range": (set_layer("elementwise", "outputs", [-1]), "'outputs' must be a list of tensor slots, got [-1]"),
    "engine output out of range": (lambda h: h.update(outputs=[10**9]), "outputs: must be distinct tensor slots in 0.."),
    "input read before it is made": (
        lambda h: first_layer(h, "convolution").update(inputs=[first_layer(h, "elementwise")["outputs"][0]]),
        "is not an engine input or an output of an earlier layer"),
    "output written twice": (
        lambda h: first_layer(h, "elementwise").update(outputs=list(first_layer(h, "convolution")["outputs"])),
        "is already an engine input or another layer's output"),
    # Enum values.
    "unknown tensor dtype": (lambda h: h["tensors"][0].update(dtype=99), "tensors[0]: 'dtype' must be a DataType the portable engine runs, got 99"),
    "FP8 tensor": (lambda h: h["tensors"][0].update(runtime_dtype=int(DataType.FP8)), "tensors[0]: 'runtime_dtype' must be a DataType"),
    "unknown elementwise op": (set_layer("elementwise", "op", 999, params=True), "'op' must be an ElementWiseOperation, got 999"),
    "unknown activation": (set_layer("activation", "activation", 999, params=True), "'activation' must be an ActivationType, got 999"),
    "unknown layer type": (set_layer("shuffle", "type", 999), "'type' must be the LayerType of a shuffle layer, got 999"),
    "unknown plugin field type": (
        lambda h: next(layer for layer in h["layers"] if layer["kind"] == "plugin")["params"]["fields"][0].__setitem__(1, 77),
        "fields[0] must be [name, PluginFieldType, data]"),
    "unknown profiling verbosity": (lambda h: h["build"].update(profiling_verbosity="LOUD"), "build: 'profiling_verbosity' must be a ProfilingVerbosity name"),
    "unknown builder flag": (lambda h: h["build"].update(flags=["FAST"]), "build: 'flags' must be a list of BuilderFlag names"),
    "a boolean for an int": (lambda h: h["tensors"][0].update(dtype=True), "tensors[0]: 'dtype' must be a DataType"),
    # Impossible layer parameters.
    "kernel count": (set_layer("convolution", "kernel_count", 7, params=True), "the kernel must be an array of kernel_count = 7 values"),
    "no output maps": (set_layer("convolution", "num_output_maps", 0, params=True), "'num_output_maps' must be a positive count, got 0"),
    "3x3 kernel": (set_layer("convolution", "kernel_shape", [3, 3], params=True), "impossible parameters: IConvolutionLayer"),
    "more output maps than the header's shape": (
        lambda h: first_layer(h, "convolution")["params"].update(
            num_output_maps=first_layer(h, "convolution")["params"]["num_output_maps"] // 2,
            kernel_count=first_layer(h, "convolution")["params"]["kernel_count"] // 2),
        "the kernel must be an array of kernel_count"),
    "not a permutation": (set_layer("shuffle", "second_transpose", [0, 0], params=True), "impossible parameters: IShuffleLayer"),
    "constant count": (set_layer("constant", "count", 2, params=True), "the values must be an array of count = volume of shape"),
    "elementwise with one input": (
        lambda h: first_layer(h, "elementwise").update(inputs=first_layer(h, "elementwise")["inputs"][:1]),
        "a elementwise layer takes 2 input(s) and gives 1 output, not 1 and 1"),
    "infinite activation alpha": (set_layer("activation", "alpha", 1e999, params=True), "'alpha' must be a finite number"),
    # Profiles.
    "min above max": (lambda h: h["profiles"][0]["input_ids"].__setitem__(0, [2, SEQ_LEN + 1]), "min [2, 65] <= opt"),
    "profile without an input": (lambda h: h["profiles"][0].__delitem__("input_mask"), "profiles[0]: must give min/opt/max shapes of exactly the inputs"),
    "no profile": (lambda h: h.update(profiles=[]), "profiles: the engine has no optimization profile"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_crafted_headers_are_refused_with_one_line(engine_bytes, case):
    change, expected = CASES[case]
    header = copy.deepcopy(header_of(engine_bytes))
    changed = change(header)
    crafted = with_header(engine_bytes, header if changed is None else changed)
    message = refusal(crafted)
    assert expected in message, message


def test_headers_json_cannot_parse_or_nests_past_the_recursion_limit(engine_bytes):
    assert "unreadable header" in refusal(with_header(engine_bytes, "{not json"))
    assert refusal(with_header(engine_bytes, "[" * 100_000 + "]" * 100_000)) == "corrupt portable engine: the header nests too deeply"


def test_preamble_claiming_a_huge_header_is_refused_before_reading_it(engine_bytes):
    start = len(trt.ENGINE_MAGIC)
    version, _, payload_len, crc = struct.unpack_from("<IQQI", engine_bytes, start)
    crafted = trt.ENGINE_MAGIC + struct.pack("<IQQI", version, 1 << 40, payload_len, crc)
    with pytest.raises(trt.EngineFormatError, match="its header claims 1099511627776 bytes, more than the 64 MiB"):
        engine_file.engine_file_size(crafted)


def test_runtime_logs_one_error_and_the_runners_print_one_line(engine_bytes, logger, tmp_path, tmp_path_factory, capsys):
    header = header_of(engine_bytes)
    first_layer(header, "elementwise")["params"]["op"] = 999
    crafted = with_header(engine_bytes, header)
    before = len(logger.records)
    assert trt.Runtime(logger).deserialize_cuda_engine(crafted) is None
    (severity, message), = logger.records[before:]
    assert severity == trt.Logger.ERROR and "'op' must be an ElementWiseOperation, got 999" in message
    path = tmp_path / "crafted.engine"
    path.write_bytes(crafted)
    vocab = tiny_model_dir(tmp_path_factory) / "vocab.txt"
    status, out, err = run_main(inference.main, ["-e", str(path), "-v", str(vocab), "-s", str(SEQ_LEN), "-p", "x", "-q", "y"], capsys)
    assert status == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("inference.py: error: corrupt portable engine: layers[") and "got 999" in err
    assert "another TensorRT version" not in err

