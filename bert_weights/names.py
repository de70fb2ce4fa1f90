"""The demo's weight names (docs/SPEC.md "Weights") and the maps from each source's own names onto them.

The builders read embeddings as ``bert_embeddings_*``, each encoder layer ``n`` as ``l{n}_*`` and the
SQuAD head as ``cls_squad_output_*``; QAT models add ``*_amax`` ranges (and sparse ones ``*_mask``).
"""

from __future__ import annotations

import re

from bert_weights.errors import WeightLoadError

# Weight names consumed by the builders.
WQKV = "attention_self_qkv_kernel"
BQKV = "attention_self_qkv_bias"
W_AOUT = "attention_output_dense_kernel"
B_AOUT = "attention_output_dense_bias"
W_MID = "intermediate_dense_kernel"
B_MID = "intermediate_dense_bias"
W_LOUT = "output_dense_kernel"
B_LOUT = "output_dense_bias"
SQD_W = "squad_output_weights"
SQD_B = "squad_output_bias"
# Factorized embeddings (ALBERT, ELECTRA-small): the dense layer from the embedding width to the hidden size.
EMB_PROJ_W = "bert_embeddings_projection_kernel"
EMB_PROJ_B = "bert_embeddings_projection_bias"

EMBEDDING_NAMES = (
    "bert_embeddings_layernorm_beta",
    "bert_embeddings_layernorm_gamma",
    "bert_embeddings_word_embeddings",
    "bert_embeddings_token_type_embeddings",
    "bert_embeddings_position_embeddings",
)

LAYER_WEIGHT_PATTERN = (
    r"attention_self_(?:qkv|query|key|value)_(?:kernel|bias)"
    r"|(?:attention_output|intermediate|output)_dense_(?:kernel|bias)"
    r"|(?:attention_output|output)_layernorm_(?:beta|gamma)"
)
WEIGHT_NAME = re.compile(
    rf"(?:{'|'.join(EMBEDDING_NAMES)}|{EMB_PROJ_W}|{EMB_PROJ_B}|l\d+_(?:{LAYER_WEIGHT_PATTERN})|cls_{SQD_W}|cls_{SQD_B})"
)


def is_quantization_entry(name: str) -> bool:
    return name.endswith("_amax") or name.endswith("_mask")


# ---------------------------------------------------------------------------------------------
# PyTorch / ONNX (NVIDIA QAT and HuggingFace BERT) names

_MATMUL_QUANTIZERS = {
    "matmul_q_quantizer": "qv_a_input_quantizer",
    "matmul_k_quantizer": "qv_b_input_quantizer",
    "matmul_v_quantizer": "av_b_input_quantizer",
    "matmul_a_quantizer": "av_a_input_quantizer",
}
_DENSE_LIKE = ("dense", "query", "key", "value", "query_key_value")
_QUANTIZER_SUFFIX = {"weight_quantizer": "kernel", "input_quantizer": "input"}


def _layernorm_param(tokens: list[str]) -> None:
    tokens[-1] = "beta" if tokens[-1] == "bias" else "gamma"


def onnx_to_trt_name(onnx_name: str) -> str:
    """Map a PyTorch/ONNX (NVIDIA QAT) tensor name to the demo's weight name."""
    tokens = [t.strip("_") for t in onnx_name.lower().split(".")]
    if len(tokens) >= 2 and tokens[0] == "bert" and tokens[1] == "encoder":
        _rename_encoder_tokens(tokens, onnx_name)
        if len(tokens) < 3 or "final_input_quantizer" not in tokens[2]:
            start = tokens.index("layers") + 1 if "layers" in tokens else 3
            tokens = tokens[start:]
            if not tokens or not tokens[0].isdigit():
                raise WeightLoadError(f"unknown tensor name {onnx_name!r}: no layer index where one is expected")
            tokens[0] = f"l{int(tokens[0])}"
    elif len(tokens) >= 2 and tokens[0] == "bert":
        if tokens[-2] == "layernorm":
            _layernorm_param(tokens)
        else:
            if tokens[-1] == "amax":
                tokens[-2] = "amax"
            tokens = tokens[:-1]
    elif "qa" in onnx_name.lower():
        return "cls_squad_output_bias" if tokens[-1] == "bias" else "cls_squad_output_weights"
    else:
        raise WeightLoadError(f"unknown tensor name {onnx_name!r}")
    return "_".join(tokens)


def _rename_encoder_tokens(tokens: list[str], onnx_name: str) -> None:
    if len(tokens) < 4:
        raise WeightLoadError(f"unknown tensor name {onnx_name!r}")
    # Sparse (ASP) checkpoints name the intermediate dense "dense_act".
    if tokens[-2] == "dense_act":
        tokens[-2] = "dense"
    elif tokens[-3] == "dense_act":
        tokens[-3] = "dense"
        tokens[-2] = _QUANTIZER_SUFFIX.get(tokens[-2], tokens[-2])
    elif tokens[-2].startswith("matmul"):
        quantizer = tokens[-2].replace("input_", "")
        if quantizer not in _MATMUL_QUANTIZERS:
            raise WeightLoadError(f"unknown tensor name {onnx_name!r}")
        tokens[-2] = _MATMUL_QUANTIZERS[quantizer]
    if tokens[-2] == "layernorm":
        _layernorm_param(tokens)
    elif tokens[-2] in _DENSE_LIKE and tokens[-1] == "weight":
        tokens[-1] = "kernel"
    elif tokens[-3] in _DENSE_LIKE and tokens[-1] == "amax":
        tokens[-2] = _QUANTIZER_SUFFIX.get(tokens[-2], tokens[-2])


# ---------------------------------------------------------------------------------------------
# TensorFlow (Google BERT) names


def tf_to_trt_name(variable: str) -> str:
    """Map a Google BERT TF variable name (``bert/encoder/layer_3/...``) to the demo's weight name."""
    tokens = variable.lower().split("/")
    if "encoder" in tokens:
        layer = re.search(r"\d+", variable)
        if layer is None or len(tokens) < 4:
            raise WeightLoadError(f"unknown tensor name {variable!r}: encoder variable without a layer index")
        return f"l{int(layer.group())}_" + "_".join(tokens[3:])
    return "_".join(tokens)
