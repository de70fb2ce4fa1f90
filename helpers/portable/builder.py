"""Logger, Builder, IBuilderConfig, optimization profiles and the network compiler.

``build_serialized_network`` checks the network the way TensorRT does (shape inference, profiles
covering every dynamic input, outputs present), decides the precision every layer runs in, and
writes the engine file (``engine_file.py``).  On any error it logs one ERROR and returns None.
"""

from __future__ import annotations

import abc
import datetime
import struct
import sys
from collections.abc import Sequence
from typing import Any

import torch

from helpers.portable import device as portable_device
from helpers.portable import enums
from helpers.portable.calibration import calibrate_engine_description
from helpers.portable.engine_file import write_engine
from helpers.portable.enums import (
    BuilderFlag,
    DataType,
    DeviceType,
    EngineCapability,
    HardwareCompatibilityLevel,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    ProfilingVerbosity,
    QuantizationFlag,
    Severity,
    TacticSource,
)
from helpers.portable.layers import BuildError, Shape, fmt_shape, is_known
from helpers.portable.network import ILayer, INetworkDefinition
from helpers.portable.plugin_registry import IPluginRegistry, get_plugin_registry
from helpers.portable.plugins import plugin_output_types
from helpers.portable.tensors import Dims, ITensor, as_shape

PRODUCER = "helpers.portable"
API_VERSION = "10.13.0"


class ILogger(abc.ABC):
    """Base class for loggers; subclasses implement ``log(severity, msg)``."""

    Severity = Severity
    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    @abc.abstractmethod
    def log(self, severity: enums.Severity, msg: str) -> None:
        """Receive one message of the given severity."""


class Logger(ILogger):
    """Prints messages at or above ``min_severity`` to stderr, in TensorRT's format."""

    _LETTER = {
        Severity.INTERNAL_ERROR: "F",
        Severity.ERROR: "E",
        Severity.WARNING: "W",
        Severity.INFO: "I",
        Severity.VERBOSE: "V",
    }

    def __init__(self, min_severity: enums.Severity = Severity.WARNING) -> None:
        self.min_severity = min_severity

    def log(self, severity: enums.Severity, msg: str) -> None:
        if severity <= self.min_severity:
            stamp = datetime.datetime.now().strftime("%m/%d/%Y-%H:%M:%S")
            print(f"[{stamp}] [TRT] [{self._LETTER[severity]}] {msg}", file=sys.stderr, flush=True)


class IHostMemory(bytearray):
    """Serialized engine or timing cache; supports the buffer protocol, so ``f.write(mem)`` works."""

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> DataType:
        return DataType.UINT8


_TIMING_CACHE_MAGIC = b"DEMOBERT-PORTABLE-TIMING-CACHE\x00"
_TIMING_CACHE_VERSION = 1


class ITimingCache:
    """The portable engine does no tactic timing; its cache is a small versioned, empty blob."""

    def serialize(self) -> IHostMemory:
        return IHostMemory(_TIMING_CACHE_MAGIC + struct.pack("<I", _TIMING_CACHE_VERSION))

    def combine(self, input_cache: ITimingCache, ignore_mismatch: bool) -> bool:
        return True

    def reset(self) -> bool:
        return True


class IOptimizationProfile:
    """Min/opt/max shapes of the network inputs; checked like TensorRT's setDimensions."""

    def __init__(self, logger: ILogger) -> None:
        self._logger = logger
        self._shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
        self.extra_memory_target = 1.0

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        low, mid, high = as_shape(min), as_shape(opt), as_shape(max)
        for label, dims, prev in (("min", low, None), ("opt", mid, low), ("max", high, mid)):
            reason = None
            if any(d < 0 for d in dims):
                reason = f"dimensions must be >= 0, got {fmt_shape(dims)}"
            elif prev is not None and len(dims) != len(prev):
                reason = f"rank {len(dims)} differs from the rank {len(prev)} of the other shapes"
            elif prev is not None and any(a > b for a, b in zip(prev, dims)):
                reason = "min <= opt <= max does not hold: " + " / ".join(map(fmt_shape, (low, mid, high)))
            if reason is not None:
                self._logger.log(Severity.ERROR, f"IOptimizationProfile::setDimensions: {input}: {reason}")
                raise RuntimeError(f"{label} input provided to optimization profile is invalid.")
        self._shapes[input] = (low, mid, high)

    def get_shape(self, input: str) -> list[Dims]:
        return [Dims(s) for s in self._shapes.get(input, ())]


class IBuilderConfig:
    _DEFAULT_TACTICS = (1 << int(TacticSource.EDGE_MASK_CONVOLUTIONS)) | (1 << int(TacticSource.JIT_CONVOLUTIONS))

    def __init__(self, logger: ILogger) -> None:
        self._logger = logger
        self.reset()

    def reset(self) -> None:
        self.flags = 0
        self.quantization_flags = 0
        self.avg_timing_iterations = 1
        self.builder_optimization_level = 3
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.int8_calibrator: Any = None
        self.engine_capability = EngineCapability.STANDARD
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.max_aux_streams = -1
        self.profile_stream = 0
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
        self.algorithm_selector: Any = None
        self.progress_monitor: Any = None
        self._tactic_sources = self._DEFAULT_TACTICS
        self._pools: dict[MemoryPoolType, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._timing_cache: ITimingCache | None = None

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags |= 1 << int(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags &= ~(1 << int(flag))

    def get_flag(self, flag: BuilderFlag) -> bool:
        return bool(self.flags >> int(flag) & 1)

    def set_quantization_flag(self, flag: QuantizationFlag) -> None:
        self.quantization_flags |= 1 << int(flag)

    def clear_quantization_flag(self, flag: QuantizationFlag) -> None:
        self.quantization_flags &= ~(1 << int(flag))

    def get_quantization_flag(self, flag: QuantizationFlag) -> bool:
        return bool(self.quantization_flags >> int(flag) & 1)

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        if pool_size < 0:
            raise ValueError(f"set_memory_pool_limit: pool size must be >= 0, got {pool_size}")
        self._pools[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        if pool in self._pools:
            return self._pools[pool]
        return portable_device.total_memory() if pool == MemoryPoolType.WORKSPACE else 0

    def get_tactic_sources(self) -> int:
        return self._tactic_sources

    def set_tactic_sources(self, tactic_sources: int) -> bool:
        self._tactic_sources = int(tactic_sources)
        return True

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile._shapes:
            self._logger.log(Severity.ERROR, "IBuilderConfig::addOptimizationProfile: the profile sets no input shapes")
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def create_timing_cache(self, serialized_timing_cache: Any) -> ITimingCache | None:
        blob = bytes(serialized_timing_cache)
        if blob and blob != ITimingCache().serialize():
            self._logger.log(
                Severity.ERROR,
                "IBuilderConfig::createTimingCache: not a portable timing cache (or another format version)",
            )
            return None
        return ITimingCache()

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing_cache


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self.max_threads = 1

    def __enter__(self) -> Builder:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        if flags >> int(NetworkDefinitionCreationFlag.STRONGLY_TYPED) & 1:
            self.logger.log(Severity.WARNING, "STRONGLY_TYPED networks are built weakly typed by the portable engine")
        return INetworkDefinition(self, int(flags))

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self.logger)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile(self.logger)

    def get_plugin_registry(self) -> IPluginRegistry:
        return get_plugin_registry()

    @property
    def platform_has_fast_fp16(self) -> bool:
        return portable_device.get_device().type == "cuda"

    @property
    def platform_has_fast_int8(self) -> bool:
        return False

    @property
    def platform_has_tf32(self) -> bool:
        dev = portable_device.get_device()
        return dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 8

    @property
    def num_DLA_cores(self) -> int:
        return 0

    @property
    def max_DLA_batch_size(self) -> int:
        return 1

    def is_network_supported(self, network: INetworkDefinition, config: IBuilderConfig) -> bool:
        try:
            compile_network(network, config, self.logger)
        except BuildError:
            return False
        return True

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        try:
            header = compile_network(network, config, self.logger)
        except BuildError as err:
            self.logger.log(Severity.ERROR, f"IBuilder::buildSerializedNetwork: Error Code 4: {err}")
            return None
        return write_engine(header, allocate=IHostMemory)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Compilation: network + config -> engine header (numpy arrays inside go to the payload)


def _profiles(inputs: Sequence[ITensor], config: IBuilderConfig) -> list[dict[str, list[list[int]]]]:
    dynamic = [t for t in inputs if not is_known(t._input_shape)]
    if dynamic and not config._profiles:
        raise BuildError(
            f"Network has dynamic or shape inputs, but no optimization profile has been defined "
            f"(dynamic input: {dynamic[0].name} {fmt_shape(dynamic[0]._input_shape)})"
        )
    names = {t.name for t in inputs}
    result = []
    for index, profile in enumerate(config._profiles or [IOptimizationProfile(config._logger)]):
        for name in profile._shapes:
            if name not in names:
                raise BuildError(f"optimization profile {index} sets a shape for {name!r}, which is not a network input")
        entry = {}
        for tensor in inputs:
            declared = tensor._input_shape
            shapes = profile._shapes.get(tensor.name)
            if shapes is None:
                if not is_known(declared):
                    raise BuildError(
                        f"{tensor.name}: dynamic input is missing dimensions in profile {index}."
                    )
                shapes = (declared, declared, declared)
            for label, dims in zip(("min", "opt", "max"), shapes):
                if len(dims) != len(declared):
                    raise BuildError(
                        f"optimization profile {index}: {label} shape {fmt_shape(dims)} of {tensor.name} has rank "
                        f"{len(dims)}, the input {fmt_shape(declared)} has rank {len(declared)}"
                    )
                for d, fixed in zip(dims, declared):
                    if fixed >= 0 and d != fixed:
                        raise BuildError(
                            f"optimization profile {index}: {label} shape {fmt_shape(dims)} of {tensor.name} "
                            f"conflicts with its static dimensions {fmt_shape(declared)}"
                        )
            entry[tensor.name] = [list(s) for s in shapes]
        result.append(entry)
    return result


def _used_layers(network: INetworkDefinition) -> list[ILayer]:
    """Layers contributing to an output, in network order (TensorRT drops the rest)."""
    needed = {id(t) for t in network._outputs}
    keep = []
    for layer in reversed(network._layers):
        if any(id(t) in needed for t in layer._outputs):
            keep.append(layer)
            needed.update(id(t) for t in layer._inputs)
    return keep[::-1]


def _runtime_types(layer: ILayer, declared: list[DataType], inputs: list[DataType], fp16: bool) -> tuple[DataType, list[DataType]]:
    """(compute type, output types) the layer runs with in the engine."""
    float_compute = layer._precision if layer._precision is not None else (DataType.HALF if fp16 else DataType.FLOAT)
    if layer._kind == "shuffle":
        return inputs[0], [inputs[0]]
    if layer._kind == "plugin":
        outs = plugin_output_types(layer._plugin._params, declared, inputs)  # type: ignore[attr-defined]
        return outs[0], outs
    if layer._kind == "constant" and declared[0] not in (DataType.FLOAT, DataType.HALF):
        return declared[0], declared
    if layer._kind in ("elementwise",) and inputs[0] == DataType.INT32:
        return DataType.INT32, [DataType.INT32]
    return float_compute, [layer._output_types.get(0, float_compute)]


def compile_network(network: INetworkDefinition, config: IBuilderConfig, logger: ILogger) -> dict[str, Any]:
    """Check the network and config; return the engine header.  Raises BuildError."""
    if not network._outputs:
        raise BuildError("Network must have at least one output")
    io_names = [t.name for t in network._inputs] + [t.name for t in network._outputs]
    duplicate = next((n for n in io_names if io_names.count(n) > 1), None)
    if duplicate is not None:
        raise BuildError(f"the name {duplicate!r} is used by more than one network input/output tensor")
    for tensor in network._inputs:
        if tensor._input_dtype not in (DataType.FLOAT, DataType.HALF, DataType.INT32, DataType.BOOL, DataType.INT8):
            raise BuildError(f"network input {tensor.name}: type {tensor._input_dtype.name} is not supported")
    inferred = network.infer_all()
    profiles = _profiles(network._inputs, config)

    fp16 = config.get_flag(BuilderFlag.FP16)
    if config.get_flag(BuilderFlag.SPARSE_WEIGHTS):
        dev = portable_device.get_device()
        if dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 8:
            logger.log(
                Severity.INFO,
                "portable engine: SPARSE_WEIGHTS: FP16 dense layers whose weights are 2:4 run on "
                "semi-structured sparse GEMMs (the engine names them when it is loaded); the others run dense",
            )
        else:
            logger.log(
                Severity.WARNING,
                f"portable engine: SPARSE_WEIGHTS: sparse GEMMs need a CUDA GPU of compute capability 8.0+; "
                f"on {dev} the GEMMs run dense",
            )

    slots: dict[int, int] = {}
    tensors: list[dict[str, Any]] = []

    def add_tensor(tensor: ITensor, runtime: DataType) -> int:
        shape, dtype = inferred[id(tensor)]
        slots[id(tensor)] = len(tensors)
        tensors.append(
            {
                "name": tensor.name,
                "shape": list(shape),
                "dtype": int(dtype),
                "runtime_dtype": int(runtime),
                "dynamic_range": None if tensor._dynamic_range is None else list(tensor._dynamic_range),
            }
        )
        return slots[id(tensor)]

    for tensor in network._inputs:
        add_tensor(tensor, tensor._input_dtype)
    layers = []
    for layer in _used_layers(network):
        in_types = [DataType(tensors[slots[id(t)]]["runtime_dtype"]) for t in layer._inputs]
        declared = [inferred[id(t)][1] for t in layer._outputs]
        compute, out_types = _runtime_types(layer, declared, in_types, fp16)
        params = layer._params()
        params["compute_dtype"] = int(compute)
        params["output_dtypes"] = [int(t) for t in out_types]
        layers.append(
            {
                "kind": layer._kind,
                # The LayerType: an activation layer's ``type`` attribute is its ActivationType, as in TensorRT.
                "type": int(layer._layer_type),
                "name": layer.name,
                "inputs": [slots[id(t)] for t in layer._inputs],
                "outputs": [add_tensor(t, rt) for t, rt in zip(layer._outputs, out_types)],
                "params": params,
                "precision": None if layer._precision is None else int(layer._precision),
            }
        )
    for tensor in network._outputs:
        if id(tensor) not in slots:
            raise BuildError(f"output {tensor.name} is a network input; the portable engine needs a layer output")
    header = {
        "producer": PRODUCER,
        "api_version": API_VERSION,
        "name": network.name,
        "build": {
            "flags": sorted(f.name for f in BuilderFlag if config.get_flag(f)),
            "quantization_flags": sorted(f.name for f in QuantizationFlag if config.get_quantization_flag(f)),
            "tactic_sources": config.get_tactic_sources(),
            "workspace": config._pools.get(MemoryPoolType.WORKSPACE),
            "avg_timing_iterations": config.avg_timing_iterations,
            "profiling_verbosity": config.profiling_verbosity.name,
            "executes_as": "FP16" if fp16 else "FP32",
        },
        "profiles": profiles,
        "has_explicit_profiles": bool(config._profiles),
        "inputs": [slots[id(t)] for t in network._inputs],
        "outputs": [slots[id(t)] for t in network._outputs],
        "tensors": tensors,
        "layers": layers,
    }
    if config.get_flag(BuilderFlag.INT8) and config.int8_calibrator is not None:
        calibrate_engine_description(header, config.int8_calibrator, portable_device.get_device())
    return header
