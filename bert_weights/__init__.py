"""Model configuration and weights for the BERT engine builders.

Every loader returns one ``WeightMap``: the demo's weight names (docs/SPEC.md "Weights") mapped to
float32 numpy arrays in their logical shapes (dense kernels ``[out, in]``, the packed QKV kernel
``[3E, E]``), plus the raw ``*_amax`` values of QAT models.  Builders wrap the arrays in
``trt.Weights`` / ``trt.PluginField`` themselves.  Loaders only translate names and layouts.

* ``config``: ``BertConfig`` and the Google ``bert_config.json`` reader;
* ``names``: the demo's weight names and the maps from NVIDIA/HF and TF names onto them;
* ``weight_map``: entry checking, QKV packing, shape checks against the config;
* one loader per source: ``tf_checkpoint``, ``onnx_qat``, ``pytorch``, ``megatron``, and ``hf``,
  which reads a HuggingFace folder through the family of its ``model_type`` (``hf_bert``, ...).

Bad input (missing or corrupt files, unknown tensor names, shapes that disagree with the
configuration) raises ``WeightLoadError`` or ``ConfigError`` with a one-line message.
"""

from bert_weights.config import (
    BertConfig,
    bert_config_path,
    default_calibration_cache_name,
    load_bert_config,
)
from bert_weights.errors import ConfigError, WeightLoadError, first_line
from bert_weights.hf import FAMILIES, load_hf_config, load_hf_weights
from bert_weights.megatron import load_megatron_pickle_weights
from bert_weights.names import onnx_to_trt_name
from bert_weights.onnx_qat import load_onnx_weights_and_quant
from bert_weights.pytorch import load_pytorch_weights_and_quant
from bert_weights.tf_checkpoint import load_tf_weights
from bert_weights.weight_map import WeightMap, check_weights, expected_weight_shapes, pack_qkv

__all__ = [
    "FAMILIES",
    "BertConfig",
    "ConfigError",
    "WeightLoadError",
    "WeightMap",
    "bert_config_path",
    "check_weights",
    "default_calibration_cache_name",
    "expected_weight_shapes",
    "first_line",
    "load_bert_config",
    "load_hf_config",
    "load_hf_weights",
    "load_megatron_pickle_weights",
    "load_onnx_weights_and_quant",
    "load_pytorch_weights_and_quant",
    "load_tf_weights",
    "onnx_to_trt_name",
    "pack_qkv",
]
