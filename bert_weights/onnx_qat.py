"""NVIDIA QAT ONNX models: the initializers, with every ``_amax`` range."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from bert_weights.config import BertConfig
from bert_weights.errors import WeightLoadError, first_line
from bert_weights.names import onnx_to_trt_name
from bert_weights.weight_map import WeightMap, require_file, weight_map


def float_or_int8(value: np.ndarray) -> np.ndarray:
    """int8 tensors (sparsity masks, quantized weights) as they are; anything else as float32."""
    return value if value.dtype == np.int8 else value.astype(np.float32)


def load_onnx_weights_and_quant(path: str, config: BertConfig) -> WeightMap:
    """Initializers of an NVIDIA QAT ONNX model, including every ``_amax`` entry."""
    require_file(path, "ONNX model")
    try:
        model = onnx.load(path)
        entries = [
            (init.name, onnx_to_trt_name(init.name), float_or_int8(numpy_helper.to_array(init)))
            for init in model.graph.initializer
        ]
    except WeightLoadError:
        raise
    except Exception as exc:  # protobuf DecodeError, bad raw_data sizes, external-data errors, ...
        raise WeightLoadError(f"cannot read ONNX model {path}: {first_line(exc)}") from None
    if not entries:
        raise WeightLoadError(f"ONNX model {path} has no initializers (weights)")
    return weight_map(entries, config, path)
