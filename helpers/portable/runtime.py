"""Runtime, ICudaEngine and IExecutionContext of the portable engine.

An engine loads its file once, at deserialization: the typed graph (``graph.load_graph``, plugin
fields parsed once), the options it runs with (``options.EngineOptions``, read then and never
again), and the plan the passes of ``passes.py`` lower the graph into, its weights converted once
to the engine's precision on its device.  Contexts resolve every tensor's shape on the host when
input shapes are set, so ``execute_async_v3`` does no host synchronisation and is
CUDA-graph-capture safe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from helpers.portable import device as portable_device
from helpers.portable import layers
from helpers.portable.builder import IHostMemory, ILogger
from helpers.portable.device import wrap_pointer
from helpers.portable.engine_file import EngineFormatError, read_engine
from helpers.portable.enums import (
    DataType,
    EngineCapability,
    ExecutionContextAllocationStrategy,
    ProfilingVerbosity,
    Severity,
    TensorFormat,
    TensorIOMode,
    TensorLocation,
)
from helpers.portable.graph import execute, load_graph, resolve_shapes
from helpers.portable.layers import BuildError, Shape, fmt_shape, is_known
from helpers.portable.options import EngineOptions
from helpers.portable.passes import build_plan
from helpers.portable.plugin_registry import get_plugin_registry
from helpers.portable.tensors import Dims, as_shape


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self.DLA_core = -1
        self.max_threads = 1
        self.engine_host_code_allowed = False
        # Portable extension: the options engines deserialized from now on run with (None: read
        # from the environment at each deserialization).
        self.engine_options: EngineOptions | None = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @property
    def num_DLA_cores(self) -> int:
        return 0

    def get_plugin_registry(self) -> Any:
        return get_plugin_registry()

    def deserialize_cuda_engine(self, serialized_engine: Any) -> ICudaEngine | None:
        try:
            # Keep the caller's buffer (no copy of the weights); serialize() copies it out.
            data = serialized_engine if isinstance(serialized_engine, (bytes, bytearray)) else bytes(serialized_engine)
            description = read_engine(data)
            options = self.engine_options if self.engine_options is not None else EngineOptions.from_environment()
            return ICudaEngine(data, description, portable_device.get_device(), self.logger, options)
        except (EngineFormatError, TypeError) as err:
            self.logger.log(Severity.ERROR, f"IRuntime::deserializeCudaEngine: {err}")
            return None
        except (KeyError, IndexError, ValueError) as err:
            self.logger.log(Severity.ERROR, f"IRuntime::deserializeCudaEngine: corrupt portable engine ({err!r})")
            return None


class ICudaEngine:
    def __init__(self, data: bytes | bytearray, description: dict[str, Any], dev: torch.device, logger: ILogger,
                 options: EngineOptions) -> None:
        self._data = data
        self._description = description
        self._logger = logger
        self.device = dev
        tensors = description["tensors"]
        self._io = [(tensors[s]["name"], s, TensorIOMode.INPUT) for s in description["inputs"]]
        self._io += [(tensors[s]["name"], s, TensorIOMode.OUTPUT) for s in description["outputs"]]
        self._by_name = {name: (slot, mode) for name, slot, mode in self._io}
        self._graph = load_graph(description)
        self.options = options.for_flags(self._graph.flags)  # portable extension: what the plan was built with
        self._plan = build_plan(self._graph, dev, self.options, logger)
        self._shape_cache: dict[tuple[Shape, ...], dict[int, Shape] | str] = {}
        self.error_recorder = None
        self.weight_streaming_budget = 0

    # ---- I/O queries

    def _slot(self, name: str) -> int | None:
        entry = self._by_name.get(name)
        if entry is None:
            self._logger.log(Severity.ERROR, f"ICudaEngine: {name!r} is not an input or output tensor of this engine")
            return None
        return entry[0]

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str | None:
        return self._io[index][0] if 0 <= index < len(self._io) else None

    def __getitem__(self, index: int) -> str | None:
        return self.get_tensor_name(index)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        entry = self._by_name.get(name)
        return TensorIOMode.NONE if entry is None else entry[1]

    def get_tensor_dtype(self, name: str) -> DataType | None:
        slot = self._slot(name)
        return None if slot is None else DataType(self._description["tensors"][slot]["dtype"])

    def get_tensor_shape(self, name: str) -> Dims | None:
        slot = self._slot(name)
        return None if slot is None else Dims(self._description["tensors"][slot]["shape"])

    def get_tensor_location(self, name: str) -> TensorLocation:
        return TensorLocation.DEVICE

    def get_tensor_format(self, name: str, profile_index: int = 0) -> TensorFormat:
        return TensorFormat.LINEAR

    def get_tensor_format_desc(self, name: str, profile_index: int = 0) -> str:
        return "Row major linear format"

    def get_tensor_bytes_per_component(self, name: str, profile_index: int = 0) -> int:
        dtype = self.get_tensor_dtype(name)
        return -1 if dtype is None else dtype.itemsize

    def get_tensor_components_per_element(self, name: str, profile_index: int = 0) -> int:
        return 1

    def get_tensor_vectorized_dim(self, name: str, profile_index: int = 0) -> int:
        return -1

    def is_shape_inference_io(self, name: str) -> bool:
        return False

    def is_debug_tensor(self, name: str) -> bool:
        return False

    # ---- profiles

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._description["profiles"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        if self.get_tensor_mode(name) != TensorIOMode.INPUT:
            self._logger.log(Severity.ERROR, f"ICudaEngine::getProfileShape: {name!r} is not an input tensor")
            return []
        if not 0 <= profile_index < self.num_optimization_profiles:
            self._logger.log(
                Severity.ERROR,
                f"ICudaEngine::getProfileShape: profile index {profile_index} is out of range "
                f"[0, {self.num_optimization_profiles})",
            )
            return []
        return [Dims(s) for s in self._description["profiles"][profile_index][name]]

    # ---- engine facts

    @property
    def num_layers(self) -> int:
        return len(self._description["layers"])

    @property
    def name(self) -> str:
        """The network's name, kept as TensorRT engines keep it ("portable engine" in files that predate it)."""
        return self._description.get("name", "portable engine")

    @property
    def device_memory_size(self) -> int:
        return 0

    device_memory_size_v2 = device_memory_size

    def get_device_memory_size_for_profile(self, profile_index: int) -> int:
        return 0

    @property
    def has_implicit_batch_dimension(self) -> bool:
        return False

    @property
    def engine_capability(self) -> EngineCapability:
        return EngineCapability.STANDARD

    @property
    def profiling_verbosity(self) -> ProfilingVerbosity:
        return ProfilingVerbosity[self._description["build"]["profiling_verbosity"]]

    @property
    def tactic_sources(self) -> int:
        return int(self._description["build"]["tactic_sources"])

    @property
    def refittable(self) -> bool:
        return False

    @property
    def num_aux_streams(self) -> int:
        return 0

    @property
    def build_info(self) -> dict[str, Any]:
        """Portable extension: the build options the engine file records."""
        return dict(self._description["build"])

    def serialize(self) -> IHostMemory:
        return IHostMemory(self._data)

    def create_execution_context(
        self, strategy: ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy.STATIC
    ) -> IExecutionContext:
        return IExecutionContext(self)

    def create_execution_context_without_device_memory(self) -> IExecutionContext:
        return IExecutionContext(self)

    # ---- shapes for contexts

    def _resolve(self, input_shapes: tuple[Shape, ...]) -> dict[int, Shape] | str:
        """Shapes by slot for complete input shapes, or the error message (cached per shape set)."""
        cached = self._shape_cache.get(input_shapes)
        if cached is None:
            slots = self._description["inputs"]
            try:
                cached = resolve_shapes(self._graph, dict(zip(slots, input_shapes)))
            except BuildError as err:
                cached = str(err)
            self._shape_cache[input_shapes] = cached
        return cached


# ----------------------------------------------------------------------------------------------
# Execution context


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self._engine = engine
        self._logger = engine._logger
        self._profile = 0
        self._input_shapes: dict[str, Shape] = {}
        self._addresses: dict[str, int] = {}
        self._views: dict[tuple[int, Shape, DataType], torch.Tensor] = {}
        self._streams: dict[int, Any] = {}
        self.name = ""
        self.debug_sync = False
        self.profiler = None
        self.error_recorder = None
        self.enqueue_emits_profile = True
        self._reset_static_shapes()

    @property
    def engine(self) -> ICudaEngine:
        return self._engine

    def _description(self) -> dict[str, Any]:
        return self._engine._description

    def _inputs(self) -> list[tuple[str, int]]:
        return [(n, s) for n, s, mode in self._engine._io if mode == TensorIOMode.INPUT]

    def _reset_static_shapes(self) -> None:
        tensors = self._description()["tensors"]
        self._input_shapes = {
            name: tuple(tensors[slot]["shape"]) for name, slot in self._inputs() if is_known(tensors[slot]["shape"])
        }

    # ---- profiles

    @property
    def active_optimization_profile(self) -> int:
        return self._profile

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        count = self._engine.num_optimization_profiles
        if not 0 <= profile_index < count:
            self._logger.log(
                Severity.ERROR,
                f"IExecutionContext::setOptimizationProfileAsync: profile index {profile_index} is out of range [0, {count})",
            )
            return False
        if profile_index != self._profile:
            self._profile = profile_index
            self._reset_static_shapes()
        return True

    # ---- shapes

    def set_input_shape(self, name: str, shape: Any) -> bool:
        dims = as_shape(shape)
        where = "IExecutionContext::setInputShape"
        if self._engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            self._logger.log(Severity.ERROR, f"{where}: {name!r} is not an input tensor of this engine")
            return False
        low, _, high = self._description()["profiles"][self._profile][name]
        fits = len(dims) == len(low) and all(a <= d <= b for a, d, b in zip(low, dims, high))
        if not fits:
            self._logger.log(
                Severity.ERROR,
                f"{where}: Error Code 3: API Usage Error (Set dimension {fmt_shape(dims)} for tensor {name} does not "
                f"satisfy any optimization profiles. Valid range for profile {self._profile}: "
                f"{fmt_shape(low)}..{fmt_shape(high)}.)",
            )
            return False
        # Like TensorRT, only the profile is checked here: inputs are set one at a time, so their
        # mutual consistency is checked by infer_shapes() and execute_async_v3().
        self._input_shapes[name] = dims
        return True

    def _resolved(self) -> dict[int, Shape] | str | None:
        """Shapes by slot once every input shape is set (None before)."""
        inputs = self._inputs()
        if any(name not in self._input_shapes for name, _ in inputs):
            return None
        return self._engine._resolve(tuple(self._input_shapes[name] for name, _ in inputs))

    def get_tensor_shape(self, name: str) -> Dims:
        mode = self._engine.get_tensor_mode(name)
        if mode == TensorIOMode.NONE:
            self._logger.log(Severity.ERROR, f"IExecutionContext::getTensorShape: {name!r} is not an I/O tensor")
            return Dims()
        if mode == TensorIOMode.INPUT and name in self._input_shapes:
            return Dims(self._input_shapes[name])
        slot = self._engine._by_name[name][0]
        resolved = self._resolved()
        if isinstance(resolved, dict):
            return Dims(resolved[slot])
        return Dims(self._description()["tensors"][slot]["shape"])

    def infer_shapes(self) -> list[str]:
        missing = [name for name, _ in self._inputs() if name not in self._input_shapes]
        if not missing and isinstance(self._resolved(), str):
            raise RuntimeError(f"IExecutionContext::inferShapes: {self._resolved()}")
        return missing

    @property
    def all_binding_shapes_specified(self) -> bool:
        return all(name in self._input_shapes for name, _ in self._inputs())

    @property
    def all_shape_inputs_specified(self) -> bool:
        return True

    # ---- addresses and execution

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self._engine.get_tensor_mode(name) == TensorIOMode.NONE:
            self._logger.log(Severity.ERROR, f"IExecutionContext::setTensorAddress: {name!r} is not an I/O tensor")
            return False
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def _stream(self, stream_handle: int) -> contextlib.AbstractContextManager[Any]:
        dev = self._engine.device
        if dev.type != "cuda" or torch.cuda.current_stream(dev).cuda_stream == stream_handle:
            return contextlib.nullcontext()
        stream = self._streams.get(stream_handle)
        if stream is None:
            stream = self._streams[stream_handle] = torch.cuda.ExternalStream(stream_handle, device=dev)
        return torch.cuda.stream(stream)

    def _view(self, name: str, slot: int, shape: Shape) -> torch.Tensor:
        dtype = DataType(self._description()["tensors"][slot]["dtype"])
        key = (self._addresses[name], shape, dtype)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = wrap_pointer(key[0], shape, dtype, self._engine.device)
        return view

    def execute_async_v3(self, stream_handle: int) -> bool:
        where = "IExecutionContext::enqueueV3"
        resolved = self._resolved()
        if isinstance(resolved, str):
            self._logger.log(Severity.ERROR, f"{where}: {resolved}")
            return False
        if resolved is None:
            missing = [name for name, _ in self._inputs() if name not in self._input_shapes]
            self._logger.log(Severity.ERROR, f"{where}: input shapes not specified for: {', '.join(missing)}")
            return False
        unbound = [n for n, s, _ in self._engine._io if layers.volume(resolved[s]) and not self._addresses.get(n)]
        if unbound:
            self._logger.log(Severity.ERROR, f"{where}: no address set for tensor(s): {', '.join(unbound)}")
            return False
        plan = self._engine._plan
        buffers: list[Any] = [None] * plan.num_slots
        for slot, value in plan.constants.items():
            buffers[slot] = value
        try:
            with self._stream(stream_handle):
                for name, slot in self._inputs():
                    buffers[slot] = self._view(name, slot, resolved[slot])
                execute(plan, buffers)
                for name, slot, mode in self._engine._io:
                    if mode == TensorIOMode.OUTPUT and layers.volume(resolved[slot]):
                        self._view(name, slot, resolved[slot]).copy_(buffers[slot].reshape(resolved[slot]))
        except RuntimeError as err:
            self._logger.log(Severity.ERROR, f"{where}: execution failed: {err}")
            return False
        return True

    def execute_v2(self, bindings: Sequence[int]) -> bool:
        """Synchronous execution with addresses in I/O tensor order."""
        for (name, _, _), address in zip(self._engine._io, bindings):
            self.set_tensor_address(name, address)
        dev = self._engine.device
        handle = torch.cuda.current_stream(dev).cuda_stream if dev.type == "cuda" else 0
        ok = self.execute_async_v3(handle)
        if ok and dev.type == "cuda":
            torch.cuda.current_stream(dev).synchronize()
        return ok
