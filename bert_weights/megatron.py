"""Pickled Megatron weight dictionaries: QKV already fused, in interleaved order."""

from __future__ import annotations

import numpy as np

from bert_weights.config import BertConfig
from bert_weights.errors import WeightLoadError, first_line
from bert_weights.names import onnx_to_trt_name
from bert_weights.weight_map import WeightMap, require_file, weight_map
from helpers.weight_pickle import load_weight_pickle

# Megatron's names where they differ from NVIDIA BERT's, after onnx_to_trt_name.
RENAMES = (
    ("embedding_", "embeddings_"),
    ("tokentype_", "token_type_"),
    ("_av", "_self_av"),
    ("_qv", "_self_qv"),
    ("query_key_value", "self_qkv"),
)


def load_megatron_pickle_weights(path: str, config: BertConfig) -> WeightMap:
    """A pickled Megatron weight dictionary: QKV is already fused, in interleaved order."""
    require_file(path, "Megatron pickle")
    try:
        tensors = load_weight_pickle(path)
    except Exception as exc:  # refused globals, truncated or foreign pickles, unreadable files
        raise WeightLoadError(f"cannot read Megatron pickle {path}: {first_line(exc)}") from None
    if not isinstance(tensors, dict):
        raise WeightLoadError(f"Megatron pickle {path} does not hold a dict")
    final_amax = f"l{config.num_hidden_layers - 1}_output_layernorm_output_quantizer_amax"
    entries = []
    for source, value in tensors.items():
        if "scale" in source:
            continue
        name = onnx_to_trt_name(source)
        for old, new in RENAMES:
            name = name.replace(old, new)
        array = np.asarray(value)
        if name == final_amax:
            name = "bert_encoder_final_input_quantizer_amax"
        elif name.endswith(("self_qkv_kernel", "self_qkv_bias")):
            hidden = config.hidden_size
            shape = (3 * hidden, hidden) if name.endswith("kernel") else (3 * hidden,)
            if array.size != int(np.prod(shape)):
                raise WeightLoadError(
                    f"{path}: {source!r} has shape {tuple(array.shape)}, expected {int(np.prod(shape))} values {shape} from the config"
                )
            array = array.astype(np.float32).reshape(shape)
        entries.append((source, name, array))
    weights = weight_map(entries, config, path)
    for name in [n for n in weights if n.endswith("_qkv_input_amax")]:
        for projection in ("query", "key", "value"):
            weights[name.replace("_qkv_input_amax", f"_{projection}_input_amax")] = weights[name]
    return weights
