"""The one engine runner behind inference*.py, perf*.py and the notebook.

It loads an engine file of either backend (told apart by the file's header), picks the
optimization profile for a shape, binds PyTorch tensors as the engine's I/O buffers, runs
``execute_async_v3`` on a PyTorch stream (optionally replaying a CUDA graph captured around
it), and times executions.  Everything TensorRT-facing is plain TensorRT Python API code on
``helpers.backend.trt``, so the same lines drive real TensorRT and the portable engine.

Both engine layouts of the demo go through the same methods:
* fixed length: ``input_ids``, ``segment_ids``, ``input_mask`` ``[B, S]`` -> ``logits_out [B, S, 2, 1, 1]``;
* variable length: ``input_ids``/``segment_ids`` ``[T]``, ``cu_seqlens [B+1]``, ``max_seqlen [S]``
  (only its length matters) -> ``logits_out [2, T, 1, 1]``.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from helpers import backend, portable
from helpers.cli import RunnerError
from helpers.model_info import ModelInfo
from helpers.portable.engine_file import PREAMBLE_BYTES, EngineFormatError, engine_file_size, is_portable_engine

OUTPUT_NAME = "logits_out"
FIXED_INPUTS = ("input_ids", "segment_ids", "input_mask")
VARSEQLEN_INPUTS = ("input_ids", "segment_ids", "cu_seqlens", "max_seqlen")
# Serialized TensorRT plans start with one of these tags; anything else is not a TensorRT engine.
TENSORRT_PLAN_TAGS = (b"ftrt", b"ptrt")
# TensorRT plans state no size in a documented header: from a pipe or device (a regular file's
# size is known) at most this much is read.  BERT-large plans are about 1.3 GiB.
TENSORRT_PLAN_MAX_BYTES = 8 << 30
_READ_CHUNK_BYTES = 64 << 20
PLUGIN_LIBRARY = "nvinfer_plugin_10.dll" if sys.platform == "win32" else "libnvinfer_plugin.so"
PLUGIN_PATH_VARIABLE = "PATH" if sys.platform == "win32" else "LD_LIBRARY_PATH"
DOCTOR_HINT = "run `python3 -m helpers.doctor` to see what is missing"


class NoProfileError(RunnerError):
    """No optimization profile of the engine covers the requested (batch, sequence) shape."""

    def __init__(self, batch_size: int, sequence_length: int):
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        super().__init__(
            f"None of the dynamic shape profiles meets the requirement batch = {batch_size} "
            f"and sequence = {sequence_length}."
        )


# --------------------------------------------------------------------------------------------
# Engine files and backends


def engine_backend(data: bytes) -> str:
    """'portable' or 'tensorrt', from the first bytes of a serialized engine."""
    if portable.is_portable_engine(data):
        return "portable"
    if data[:4] in TENSORRT_PLAN_TAGS:
        return "tensorrt"
    if not data:
        raise RunnerError("the engine file is empty")
    raise RunnerError("not an engine file: neither a portable engine nor a TensorRT plan (wrong file, or truncated?)")


def _read_at_most(handle: Any, count: int, regular: bool) -> bytes | bytearray:
    """Up to ``count`` more bytes (fewer at the end of the file).  A regular file is read in one
    go (its size bounds the allocation); a pipe or device in chunks, so that memory follows what
    actually arrives, not ``count``."""
    if regular:
        position = handle.tell()
        return handle.read(max(min(count, os.fstat(handle.fileno()).st_size - position), 0))
    data = bytearray()
    while len(data) < count:
        chunk = handle.read(min(count - len(data), _READ_CHUNK_BYTES))
        if not chunk:
            break
        data += chunk
    return data


def read_engine_file(path: str | os.PathLike[str]) -> bytes | bytearray:
    """The bytes of an engine file, read no further than the engine extends: a portable engine
    as far as its preamble's sizes say (plus one byte, to notice trailing data), a TensorRT plan
    to the end of a regular file or at most TENSORRT_PLAN_MAX_BYTES from a pipe or device, and
    anything else only as far as it takes to tell that it is not an engine."""
    try:
        with open(path, "rb") as handle:
            regular = stat.S_ISREG(os.fstat(handle.fileno()).st_mode)
            head = _read_at_most(handle, PREAMBLE_BYTES, regular)
            if head[:4] in TENSORRT_PLAN_TAGS:
                limit = sys.maxsize if regular else TENSORRT_PLAN_MAX_BYTES + 1
            elif len(head) == PREAMBLE_BYTES and is_portable_engine(head):
                try:
                    limit = engine_file_size(head) + 1
                except EngineFormatError as err:
                    raise RunnerError(f"cannot load engine {path}: {err}") from None
            else:
                return head
            if regular:
                handle.seek(0)
                return _read_at_most(handle, limit, regular)
            data = bytearray(head)
            data += _read_at_most(handle, limit - len(head), regular)
            if head[:4] in TENSORRT_PLAN_TAGS and len(data) > TENSORRT_PLAN_MAX_BYTES:
                raise RunnerError(
                    f"engine file {path} holds more than {TENSORRT_PLAN_MAX_BYTES >> 20} MiB, the most read "
                    "of a TensorRT plan from a pipe or device"
                )
            return data
    except FileNotFoundError:
        raise RunnerError(f"engine file not found: {path}") from None
    except IsADirectoryError:
        raise RunnerError(f"engine path is a directory, not a file: {path}") from None
    except OSError as err:
        raise RunnerError(f"cannot read engine file {path}: {err.strerror}") from None


def load_plugin_library() -> None:
    """Load TensorRT's plugin library globally so that deserialization finds the BERT plugins."""
    try:
        ctypes.CDLL(PLUGIN_LIBRARY, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        raise RunnerError(
            f"Could not load plugin library. Is `{PLUGIN_LIBRARY}` on your {PLUGIN_PATH_VARIABLE}? ({DOCTOR_HINT})"
        ) from None


def tensorrt_available() -> bool:
    return backend.import_tensorrt() is not None


def bind_backend_for(data: bytes, device: str | None = None) -> tuple[str, torch.device]:
    """Bind ``helpers.backend.trt`` to the backend that can run ``data``; return (backend, device)."""
    kind = engine_backend(data)
    if kind == "portable":
        try:
            portable.read_engine_header(data)
            chosen = portable.get_device() if device is None else portable.set_device(device)
        except ValueError as err:
            raise RunnerError(str(err)) from None
        backend.select_backend("portable")
        return kind, chosen
    if not tensorrt_available():
        raise RunnerError(
            "this engine is a TensorRT plan, but TensorRT is not installed here; rebuild it with "
            f"`--backend portable` or install TensorRT ({DOCTOR_HINT})"
        )
    if device is not None and not device.startswith("cuda"):
        raise RunnerError(f"TensorRT engines run only on CUDA devices, not {device!r}")
    if not torch.cuda.is_available():
        raise RunnerError(f"this engine is a TensorRT plan and needs a CUDA GPU, but PyTorch sees none ({DOCTOR_HINT})")
    backend.select_backend("tensorrt")
    load_plugin_library()
    return kind, torch.device(device or "cuda")


# The embedding plugin and its field holding the word embedding table (TensorRT's names).
EMBEDDING_PLUGIN = "CustomEmbLayerNormPluginDynamic"
WORD_EMBEDDINGS_FIELD = "bert_embeddings_word_embeddings"
LAYERNORM_BETA_FIELD = "bert_embeddings_layernorm_beta"


def word_embedding_rows(data: bytes) -> int | None:
    """Rows (the vocabulary size) of a portable engine's word embedding table, read from its
    header; None for a TensorRT plan, whose weights cannot be inspected."""
    if engine_backend(data) != "portable":
        return None
    header = portable.read_engine_header(data)
    arrays = header["arrays"]
    for layer in header["layers"]:
        params = layer["params"]
        if layer["kind"] == "plugin" and params["plugin"] == EMBEDDING_PLUGIN:
            sizes = {name: int(np.prod(arrays[value["__array__"]]["shape"])) for name, _tag, value in params["fields"]}
            return sizes[WORD_EMBEDDINGS_FIELD] // sizes[LAYERNORM_BETA_FIELD]
    return None


def portable_device() -> torch.device:
    """The device the portable engine executes on (it reads DEMOBERT_DEVICE, else CUDA when present)."""
    try:
        return portable.get_device()
    except ValueError as err:
        raise RunnerError(str(err)) from None


def dims_tuple(dims: Any) -> tuple[int, ...]:
    """A ``trt.Dims`` (or any sequence of ints) as a tuple."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _torch_dtype(trt_dtype: Any) -> torch.dtype:
    trt = backend.trt
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
    }
    try:
        return table[trt_dtype]
    except KeyError:
        raise RunnerError(f"unsupported engine I/O data type {trt_dtype}") from None


def check_packed_inputs(cu_seqlens: np.ndarray, total_tokens: int, max_seqlen: int, padding: bool = False) -> None:
    """Raise RunnerError unless cu_seqlens = [0, s0, s0+s1, ..., T] with 1 <= s_i <= max_seqlen.

    ``padding``: empty sequences (s_i = 0) and tokens past the last sequence are allowed too, so
    that batches of other sizes can fill the shapes of one captured CUDA graph.
    """
    if len(cu_seqlens) < 2 or cu_seqlens[0] != 0:
        raise RunnerError(f"cu_seqlens must start at 0 and hold batch size + 1 entries, got {cu_seqlens.tolist()}")
    lengths = np.diff(cu_seqlens)
    if np.any(lengths < 0) or (not padding and np.any(lengths == 0)):
        raise RunnerError(f"cu_seqlens must be {'non-decreasing' if padding else 'strictly increasing'}, got {cu_seqlens.tolist()}")
    if cu_seqlens[-1] > total_tokens or (not padding and cu_seqlens[-1] != total_tokens):
        raise RunnerError(f"cu_seqlens ends at {cu_seqlens[-1]}, but the batch has {total_tokens} tokens")
    if lengths.max() > max_seqlen:
        raise RunnerError(f"a sequence of {lengths.max()} tokens is more than the maximum {max_seqlen} (max_seqlen)")


# --------------------------------------------------------------------------------------------
# The runner


class EngineRunner:
    """Runs one deserialized engine: profile choice, I/O buffers, execution, CUDA graphs, timing."""

    def __init__(self, engine_path: str | os.PathLike[str], device: str | None = None, enable_graph: bool = False):
        data = read_engine_file(engine_path)
        self.engine_path = str(engine_path)
        self.backend, self.device = bind_backend_for(data, device)
        trt = backend.trt
        self.logger = trt.Logger(trt.Logger.ERROR)
        if self.backend == "tensorrt":
            trt.init_libnvinfer_plugins(self.logger, "")
        self.runtime = trt.Runtime(self.logger)
        try:
            self.engine = self.runtime.deserialize_cuda_engine(data)
        except (ValueError, RuntimeError) as err:
            raise RunnerError(f"cannot deserialize engine {engine_path}: {err}") from None
        finally:
            if self.backend == "portable" and device is not None:
                # The engine keeps its device; later deserializations go back to the default rule.
                portable.set_device(None)
        if self.engine is None:
            raise RunnerError(f"cannot deserialize engine {engine_path} (built by another TensorRT version or for another GPU?)")
        # Read only from a header the runtime accepted.
        self.word_embedding_rows = word_embedding_rows(data)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RunnerError("cannot create an execution context for this engine")

        self.io_names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in self.io_names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if OUTPUT_NAME not in self.io_names:
            raise RunnerError(f"engine has no `{OUTPUT_NAME}` output; I/O tensors are {self.io_names}")
        if set(self.input_names) == set(VARSEQLEN_INPUTS):
            self.varseqlen = True
        elif set(self.input_names) == set(FIXED_INPUTS):
            self.varseqlen = False
        else:
            raise RunnerError(f"engine inputs {self.input_names} are not those of a BERT QA engine")
        self.dtypes = {n: _torch_dtype(self.engine.get_tensor_dtype(n)) for n in self.io_names}
        # Family, tokenizer kind and token types, as the builder recorded them in the network's name.
        self.model = ModelInfo.from_network_name(self.engine.name)

        self.enable_graph = enable_graph and self.device.type == "cuda"
        self.stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None
        self._storage: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.profile: int | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._active_graph: torch.cuda.CUDAGraph | None = None
        # One memory pool for all graphs: their replays never overlap (one stream) and their
        # inputs and outputs live in the runner's buffers, so only scratch memory is shared.
        self._graph_pool = torch.cuda.graph_pool_handle() if self.enable_graph else None

    # ---- shapes and profiles -------------------------------------------------------------

    def input_shapes(self, batch_size: int, sequence_length: int, total_tokens: int | None = None) -> dict[str, tuple[int, ...]]:
        """The input shapes for a batch: [B, S] each (fixed) or the packed shapes (varseqlen).

        ``total_tokens`` (varseqlen only) is the packed token count T; it defaults to B*S.
        """
        if not self.varseqlen:
            return {name: (batch_size, sequence_length) for name in FIXED_INPUTS}
        tokens = batch_size * sequence_length if total_tokens is None else total_tokens
        return {
            "input_ids": (tokens,),
            "segment_ids": (tokens,),
            "cu_seqlens": (batch_size + 1,),
            "max_seqlen": (sequence_length,),
        }

    def profile_shapes(self, name: str, profile: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(min, max) shape of input ``name`` in ``profile``."""
        low, _opt, high = self.engine.get_tensor_profile_shape(name, profile)
        if len(low) == 0:
            # A static-shape engine may report no profile shapes; its one shape is the only one.
            static = dims_tuple(self.engine.get_tensor_shape(name))
            return static, static
        return dims_tuple(low), dims_tuple(high)

    def select_profile(self, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
        """Index of the first profile whose min/max cover every given input shape, or None."""
        for profile in range(self.engine.num_optimization_profiles):
            if all(self._covers(name, profile, shape) for name, shape in shapes.items()):
                return profile
        return None

    def profile_ranges(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """((min, max) batch size, (min, max) sequence length) of every optimization profile."""
        ranges = []
        for profile in range(self.engine.num_optimization_profiles):
            if self.varseqlen:
                (batch_low,), (batch_high,) = self.profile_shapes("cu_seqlens", profile)
                (sequence_low,), (sequence_high,) = self.profile_shapes("max_seqlen", profile)
                # cu_seqlens holds batch size + 1 offsets; a batch has at least one sequence.
                ranges.append(((max(batch_low - 1, 1), batch_high - 1), (sequence_low, sequence_high)))
            else:
                low, high = self.profile_shapes("input_ids", profile)
                ranges.append(((low[0], high[0]), (low[1], high[1])))
        return ranges

    def uncovered_dimension(self, batch_size: int, sequence_length: int) -> str:
        """Which part of a shape no profile takes, and what the profiles take, as one sentence."""
        ranges = self.profile_ranges()

        def span(low: int, high: int) -> str:
            return str(low) if low == high else f"{low}..{high}"

        takes = "; ".join(f"batch size {span(*batch)} with sequence length {span(*sequence)}" for batch, sequence in ranges)
        if not any(low <= batch_size <= high for (low, high), _ in ranges):
            which = f"Batch size {batch_size} is"
        elif not any(low <= sequence_length <= high for _, (low, high) in ranges):
            which = f"Sequence length {sequence_length} is"
        else:
            which = f"Batch size {batch_size} with sequence length {sequence_length} is"
        return f"{which} outside every profile of the engine, which takes {takes}."

    def _covers(self, name: str, profile: int, shape: tuple[int, ...]) -> bool:
        low, high = self.profile_shapes(name, profile)
        return len(low) == len(shape) and all(lo <= d <= hi for lo, d, hi in zip(low, shape, high))

    def activate(self, batch_size: int, sequence_length: int, total_tokens: int | None = None) -> int:
        """Select the profile for this batch, set the input shapes and bind the I/O buffers.

        Raises NoProfileError when no profile covers the shape.  Returns the profile index.
        """
        shapes = self.input_shapes(batch_size, sequence_length, total_tokens)
        if shapes == self._shapes:
            assert self.profile is not None
            return self.profile
        profile = self.select_profile(shapes)
        if profile is None:
            raise NoProfileError(batch_size, sequence_length)
        if profile != self.profile:
            self.context.set_optimization_profile_async(profile, self._stream_handle())
            self.profile = profile
        for name, shape in shapes.items():
            if self.context.set_input_shape(name, shape) is False:
                raise NoProfileError(batch_size, sequence_length)
        missing = self.context.infer_shapes()
        if missing:
            raise RunnerError(f"the engine could not infer shapes of {list(missing)}")
        self._shapes = dict(shapes)
        for name in self.io_names:
            shape = shapes.get(name) or dims_tuple(self.context.get_tensor_shape(name))
            self.buffers[name] = self._buffer(name, shape)
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self._active_graph = None
        return profile

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A view of ``name``'s device storage with ``shape``; the storage only ever grows."""
        numel = int(np.prod(shape, dtype=np.int64))
        storage = self._storage.get(name)
        if storage is None or storage.numel() < numel:
            storage = torch.zeros(max(numel, 1), dtype=self.dtypes[name], device=self.device)
            self._storage[name] = storage
            # Captured graphs hold the old addresses.
            self._graphs.clear()
            self._active_graph = None
        return storage[:numel].view(shape)

    # ---- execution ----------------------------------------------------------------------

    def _stream_handle(self) -> int:
        return self.stream.cuda_stream if self.stream is not None else 0

    def copy_inputs(self, arrays: Mapping[str, np.ndarray | torch.Tensor], padding: bool = False) -> None:
        """Copy host arrays into the bound input buffers (asynchronously on CUDA).

        Packed inputs are checked first: the plugins would read out of bounds on a bad cu_seqlens.
        ``padding`` (portable engine only) admits empty sequences and tokens past the last sequence,
        whose logits are meaningless.
        """
        if padding and self.backend != "portable":
            raise RunnerError("padded packed batches need the portable engine")
        if "cu_seqlens" in arrays:
            check_packed_inputs(np.asarray(arrays["cu_seqlens"]), self.buffers["input_ids"].numel(),
                                self.buffers["max_seqlen"].numel(), padding)
        if self.stream is not None:
            # Device sources may still be being written on the caller's stream.
            self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
        for name, value in arrays.items():
            source = torch.as_tensor(value).reshape(self.buffers[name].shape)
            if self.stream is not None:
                with torch.cuda.stream(self.stream):
                    self.buffers[name].copy_(source, non_blocking=True)
                if source.is_cuda:  # keep the caller's memory from being reused before the copy ran
                    source.record_stream(self.stream)
            else:
                self.buffers[name].copy_(source)

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self._stream_handle()):
            raise RunnerError("execute_async_v3 failed")

    def execute(self) -> None:
        """Launch one inference on the runner's stream (a graph replay when graphs are enabled)."""
        if not self.enable_graph:
            self._enqueue()
            return
        with torch.cuda.stream(self.stream):
            self._graph_for_current_shapes().replay()

    def _graph_for_current_shapes(self) -> torch.cuda.CUDAGraph:
        if self._active_graph is not None:
            return self._active_graph
        key = (self.profile, tuple(sorted(self._shapes.items())))
        graph = self._graphs.get(key)
        if graph is None:
            # One ordinary run first: TensorRT finishes lazy set-up outside of capture.
            self._enqueue()
            self.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._graph_pool, stream=self.stream, capture_error_mode="relaxed"):
                self._enqueue()
            self._graphs[key] = graph
        self._active_graph = graph
        return graph

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def output(self) -> torch.Tensor:
        """``logits_out`` in the device buffer (overwritten by the next execution)."""
        return self.buffers[OUTPUT_NAME]

    def output_array(self) -> np.ndarray:
        """A float32 host copy of ``logits_out`` (call after synchronize)."""
        return self.output().to("cpu", torch.float32, copy=True).numpy()

    def infer(self, arrays: Mapping[str, np.ndarray | torch.Tensor], padding: bool = False) -> np.ndarray:
        """Copy inputs (``padding``: as :meth:`copy_inputs`), execute, wait, and return a float32
        host copy of ``logits_out``."""
        self.copy_inputs(arrays, padding)
        self.execute()
        self.synchronize()
        return self.output_array()

    def time_executions(self, warm_up_runs: int, iterations: int, duration_s: float = 0.0) -> list[float]:
        """Milliseconds of each timed execution, after ``warm_up_runs`` untimed ones.

        Keeps going until both ``iterations`` runs and ``duration_s`` seconds are reached.  On
        CUDA each run is bracketed by events on the runner's stream (copies excluded); on CPU by
        a monotonic clock.
        """
        if self.enable_graph:
            self._graph_for_current_shapes()  # capture outside of the timed runs
        for _ in range(warm_up_runs):
            self.execute()
            self.synchronize()
        times: list[float] = []
        started = time.perf_counter()
        if self.stream is not None:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        while len(times) < iterations or time.perf_counter() - started < duration_s:
            if self.stream is not None:
                begin.record(self.stream)
                self.execute()
                end.record(self.stream)
                end.synchronize()
                times.append(begin.elapsed_time(end))
            else:
                tick = time.perf_counter()
                self.execute()
                times.append((time.perf_counter() - tick) * 1000.0)
        return times

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return "cpu"
