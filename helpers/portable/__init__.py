"""The portable engine: the TensorRT 10 Python API subset used by the BERT demo, on PyTorch.

``import helpers.portable as trt`` gives code written for ``import tensorrt as trt`` the same
names, enum values, shapes, errors and plugin fields (see docs/ARCHITECTURE.md).  Extensions
beyond TensorRT's API: :func:`set_device`/:func:`get_device`, :data:`ENGINE_MAGIC`,
:func:`is_portable_engine` and :func:`read_engine_header`.
"""

from collections.abc import Iterable

from helpers.portable.builder import (
    Builder,
    IBuilderConfig,
    IHostMemory,
    ILogger,
    IOptimizationProfile,
    ITimingCache,
    Logger,
)
from helpers.portable.calibration import (
    IInt8Calibrator,
    IInt8EntropyCalibrator,
    IInt8EntropyCalibrator2,
    IInt8LegacyCalibrator,
    IInt8MinMaxCalibrator,
)
from helpers.portable.device import get_device, set_device
from helpers.portable.engine_file import ENGINE_MAGIC, FORMAT_VERSION, EngineFormatError, is_portable_engine, read_engine_header
from helpers.portable.enums import (
    ActivationType,
    BuilderFlag,
    CalibrationAlgoType,
    DataType,
    DeviceType,
    ElementWiseOperation,
    EngineCapability,
    ExecutionContextAllocationStrategy,
    HardwareCompatibilityLevel,
    LayerType,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    PaddingMode,
    PluginCreatorVersion,
    PluginFieldType,
    PreviewFeature,
    ProfilingVerbosity,
    QuantizationFlag,
    TacticSource,
    TensorFormat,
    TensorIOMode,
    TensorLocation,
    TensorRTPhase,
    UnaryOperation,
    nptype,
)
from helpers.portable.network import (
    IActivationLayer,
    IConstantLayer,
    IConvolutionLayer,
    IElementWiseLayer,
    ILayer,
    INetworkDefinition,
    IPluginV2Layer,
    IPluginV3Layer,
    IShuffleLayer,
    IUnaryLayer,
)
from helpers.portable.plugin_registry import (
    IPluginCreator,
    IPluginCreatorV3One,
    IPluginRegistry,
    IPluginV2,
    IPluginV3,
    get_plugin_registry,
    init_libnvinfer_plugins,
)
from helpers.portable.plugins import PluginField, PluginFieldCollection, PluginFieldCollection_
from helpers.portable.runtime import ICudaEngine, IExecutionContext, Runtime
from helpers.portable.tensors import Dims, Dims2, Dims3, Dims4, DimsHW, ITensor, Weights

__version__ = "10.13.0.portable"

float32 = DataType.FLOAT
float16 = DataType.HALF
bfloat16 = DataType.BF16
int8 = DataType.INT8
int32 = DataType.INT32
int64 = DataType.INT64
uint8 = DataType.UINT8
bool = DataType.BOOL  # noqa: A001  (tensorrt exports this name too)


def volume(iterable: Iterable[int]) -> int:
    """Product of the dimensions (``tensorrt.volume``)."""
    result = 1
    for d in iterable:
        result *= d
    return result
