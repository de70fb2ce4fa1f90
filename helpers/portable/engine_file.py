"""The portable engine file: a versioned, checksummed container of a JSON header and raw arrays.

Layout (little-endian)::

    ENGINE_MAGIC (18 bytes) | format_version u32 | header_len u64 | payload_len u64 | crc32 u32
    header: UTF-8 JSON (backend, format version, build options, profiles, network, array table)
    payload: the arrays, each 64-byte aligned

The CRC covers header and payload, so truncation and bit flips are detected before anything is
interpreted; a header with a valid CRC is then checked against the schema of ``engine_schema``
(a crafted file can carry any JSON).  Arrays appear in the header as ``{"__array__": index}``.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from helpers.portable.engine_schema import EngineFormatError, validate_header

ENGINE_MAGIC = b"DEMOBERT-PORTABLE\x00"
FORMAT_VERSION = 1
BACKEND = "portable"
_PREAMBLE = struct.Struct("<IQQI")
PREAMBLE_BYTES = len(ENGINE_MAGIC) + _PREAMBLE.size
"""The fixed-size start of an engine file: magic, format version, section sizes and CRC."""
# Headers of BERT-large engines are well under 1 MiB.
MAX_HEADER_BYTES = 64 << 20
_ALIGN = 64
# Serialized TensorRT plans start with this tag; used only to word the error helpfully.
_TENSORRT_PLAN_TAGS = (b"ftrt", b"ptrt")


def _encode(value: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        arrays.append(np.ascontiguousarray(value))
        return {"__array__": len(arrays) - 1}
    if isinstance(value, dict):
        return {str(k): _encode(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_engine(header: dict[str, Any], allocate: Callable[[int], bytearray] = bytearray) -> bytearray:
    """Serialize ``header`` (any numpy arrays inside go to the payload) into one ``allocate(size)`` buffer.

    Large models are written straight into the final buffer: no intermediate copies of the weights.
    """
    arrays: list[np.ndarray] = []
    body = _encode(header, arrays)
    offsets = []
    offset = 0
    for array in arrays:
        offset = -(-offset // _ALIGN) * _ALIGN
        offsets.append(offset)
        offset += array.nbytes
    body["arrays"] = [
        {"offset": start, "dtype": array.dtype.str, "shape": list(array.shape)} for start, array in zip(offsets, arrays)
    ]
    body["format_version"] = FORMAT_VERSION
    body["backend"] = BACKEND
    header_bytes = json.dumps(body, separators=(",", ":")).encode()
    body_start = len(ENGINE_MAGIC) + _PREAMBLE.size
    payload_start = body_start + len(header_bytes)
    blob = allocate(payload_start + offset)
    view = memoryview(blob)
    view[: len(ENGINE_MAGIC)] = ENGINE_MAGIC
    view[body_start:payload_start] = header_bytes
    for start, array in zip(offsets, arrays):
        view[payload_start + start : payload_start + start + array.nbytes] = array.reshape(-1).view(np.uint8).data
    crc = zlib.crc32(view[payload_start:], zlib.crc32(header_bytes))
    view[len(ENGINE_MAGIC) : body_start] = _PREAMBLE.pack(FORMAT_VERSION, len(header_bytes), offset, crc)
    view.release()
    return blob


def is_portable_engine(data: bytes | bytearray | memoryview) -> bool:
    """True when ``data`` starts with the portable engine magic (no other check)."""
    return bytes(memoryview(data)[: len(ENGINE_MAGIC)]) == ENGINE_MAGIC


def _preamble(view: memoryview) -> tuple[int, int, int]:
    """(header length, payload length, CRC) of the fixed-size start of an engine file."""
    if not is_portable_engine(view):
        head = bytes(view[:4])
        if not view.nbytes:
            raise EngineFormatError("the engine data is empty")
        if head in _TENSORRT_PLAN_TAGS:
            raise EngineFormatError("this looks like a TensorRT plan, not a portable engine; it needs the tensorrt backend")
        raise EngineFormatError("not a portable engine (no DEMOBERT-PORTABLE magic header)")
    start = len(ENGINE_MAGIC)
    if view.nbytes < PREAMBLE_BYTES:
        raise EngineFormatError("truncated portable engine: the header is incomplete")
    version, header_len, payload_len, crc = _PREAMBLE.unpack(view[start:PREAMBLE_BYTES])
    if version != FORMAT_VERSION:
        raise EngineFormatError(
            f"portable engine format version {version} is not supported (this build reads version {FORMAT_VERSION}); "
            "rebuild the engine"
        )
    if header_len > MAX_HEADER_BYTES:
        raise EngineFormatError(
            f"corrupt portable engine: its header claims {header_len} bytes, more than the {MAX_HEADER_BYTES >> 20} MiB a header may hold"
        )
    return header_len, payload_len, crc


def engine_file_size(start: bytes | bytearray | memoryview) -> int:
    """The size a portable engine file has, from its first PREAMBLE_BYTES bytes (what a reader
    needs to read no further); raises EngineFormatError for a start that is not a portable engine's."""
    header_len, payload_len, _ = _preamble(memoryview(start).cast("B"))
    return PREAMBLE_BYTES + header_len + payload_len


def _split(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], memoryview]:
    view = memoryview(data).cast("B")
    header_len, payload_len, crc = _preamble(view)
    body = PREAMBLE_BYTES
    expected = body + header_len + payload_len
    if view.nbytes < expected:
        raise EngineFormatError(f"truncated portable engine: {view.nbytes} bytes, {expected} expected")
    if view.nbytes > expected:
        raise EngineFormatError(f"corrupt portable engine: {view.nbytes - expected} unexpected trailing bytes")
    header_view = view[body : body + header_len]
    payload = view[body + header_len : expected]
    if zlib.crc32(payload, zlib.crc32(header_view)) != crc:
        raise EngineFormatError("corrupt portable engine: checksum mismatch")
    try:
        header = json.loads(bytes(header_view))
    except ValueError as err:
        raise EngineFormatError(f"corrupt portable engine: unreadable header ({err})") from None
    except RecursionError:
        raise EngineFormatError("corrupt portable engine: the header nests too deeply") from None
    validate_header(header, payload.nbytes)
    return header, payload


def read_engine_header(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The JSON header (backend, format_version, build options, network), checked against the
    schema of ``engine_schema``; raises EngineFormatError."""
    return _split(data)[0]


def _decode(value: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        return {k: _decode(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    return value


def read_engine(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The header with its arrays restored (read-only views into ``data``); raises EngineFormatError."""
    header, payload = _split(data)
    arrays = []
    try:
        for entry in header.pop("arrays"):
            dtype = np.dtype(entry["dtype"])
            count = int(np.prod(entry["shape"], dtype=np.int64))
            array = np.frombuffer(payload, dtype=dtype, count=count, offset=entry["offset"])
            arrays.append(array.reshape(entry["shape"]))
    except (KeyError, TypeError, ValueError) as err:
        raise EngineFormatError(f"corrupt portable engine: bad array table ({err})") from None
    return _decode(header, arrays)
