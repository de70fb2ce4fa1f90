"""The tensor side of a network definition, as the TensorRT 10 Python API exposes it: ``Dims``,
``Weights`` and ``ITensor``.  A tensor's shape and type come from its network (``network.py``),
which infers them on demand from the producing layer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from helpers.portable.enums import DataType, Severity, TensorLocation, datatype_of_numpy, nptype
from helpers.portable.layers import Shape

if TYPE_CHECKING:
    from helpers.portable.network import ILayer, INetworkDefinition


class Dims:
    """A tensor shape; -1 marks a dimension only known at run time."""

    MAX_DIMS = 8
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, shape: Iterable[int] = ()) -> None:
        dims = [int(d) for d in shape]
        if len(dims) > self.MAX_DIMS:
            raise ValueError(f"Dims: at most {self.MAX_DIMS} dimensions, got {len(dims)}")
        self._dims = dims

    def __len__(self) -> int:
        return len(self._dims)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return tuple(self._dims[index])
        return self._dims[index]

    def __setitem__(self, index: int | slice, value: Any) -> None:
        if isinstance(index, slice):
            self._dims[index] = [int(v) for v in value]
        else:
            self._dims[index] = int(value)

    def __iter__(self) -> Iterator[int]:
        return iter(self._dims)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Dims):
            return self._dims == other._dims
        if isinstance(other, (tuple, list)):
            return tuple(self._dims) == tuple(other)
        return NotImplemented

    def __repr__(self) -> str:
        return "(" + ", ".join(map(str, self._dims)) + ("," if len(self._dims) == 1 else "") + ")"

    __str__ = __repr__


class Dims2(Dims):
    def __init__(self, *dims: int) -> None:
        super().__init__(dims[0] if len(dims) == 1 else dims)  # type: ignore[arg-type,unused-ignore]


Dims3 = Dims2
Dims4 = Dims2
DimsHW = Dims2


def as_shape(shape: Any) -> Shape:
    return tuple(int(d) for d in shape)


class Weights:
    """A host array handed to a layer (``tensorrt.Weights``); keeps a reference, no copy."""

    def __init__(self, a: Any = DataType.FLOAT) -> None:
        if isinstance(a, DataType):
            self._array: np.ndarray = np.zeros(0, dtype=nptype(a))
            self._dtype = a
            return
        array = np.asarray(a)
        self._dtype = datatype_of_numpy(array.dtype)
        self._array = np.ascontiguousarray(array)

    @property
    def dtype(self) -> DataType:
        return self._dtype

    @property
    def size(self) -> int:
        return int(self._array.size)

    @property
    def nbytes(self) -> int:
        return int(self._array.nbytes)

    def __len__(self) -> int:
        return self.size

    def numpy(self) -> np.ndarray:
        return self._array


def as_weights(value: Any) -> Weights:
    if value is None:
        return Weights()
    return value if isinstance(value, Weights) else Weights(value)


class ITensor:
    def __init__(self, network: INetworkDefinition, name: str, producer: ILayer | None, index: int = 0) -> None:
        self._network = network
        self._name = name
        self._producer = producer
        self._index = index
        self._input_shape: Shape = ()
        self._input_dtype = DataType.FLOAT
        self._explicit_dtype: DataType | None = None
        self._dynamic_range: tuple[float, float] | None = None
        self.location = TensorLocation.DEVICE
        self.allowed_formats = 1
        self.broadcast_across_batch = False

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = str(value)

    @property
    def shape(self) -> Dims:
        if self._producer is None:
            return Dims(self._input_shape)
        return Dims(self._network._inferred(self)[0])

    @shape.setter
    def shape(self, value: Any) -> None:
        if self._producer is not None:
            raise AttributeError("ITensor.shape can only be set on network inputs")
        self._input_shape = as_shape(value)
        self._network._invalidate()

    @property
    def dtype(self) -> DataType:
        if self._explicit_dtype is not None:
            return self._explicit_dtype
        if self._producer is None:
            return self._input_dtype
        return self._network._inferred(self)[1]

    @dtype.setter
    def dtype(self, value: DataType) -> None:
        if self._producer is None:
            self._input_dtype = value
        else:
            self._explicit_dtype = value
        self._network._invalidate()

    def set_dynamic_range(self, min: float, max: float) -> bool:
        if not min <= max:
            self._network._log(Severity.ERROR, f"ITensor::setDynamicRange: min {min} > max {max} for {self._name}")
            return False
        self._dynamic_range = (float(min), float(max))
        return True

    def reset_dynamic_range(self) -> None:
        self._dynamic_range = None

    @property
    def dynamic_range(self) -> tuple[float, float] | None:
        return self._dynamic_range

    @dynamic_range.setter
    def dynamic_range(self, value: tuple[float, float]) -> None:
        self.set_dynamic_range(*value)

    @property
    def is_network_input(self) -> bool:
        return self._producer is None

    @property
    def is_network_output(self) -> bool:
        return any(t is self for t in self._network._outputs)

    @property
    def is_shape_tensor(self) -> bool:
        return False

    @property
    def is_execution_tensor(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<ITensor {self._name!r}>"
