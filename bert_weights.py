"""Model configuration and weights for the BERT engine builders.

Every loader returns one ``WeightMap``: the demo's weight names (DEMOBERT_SPEC §5.1) mapped to
float32 numpy arrays in their logical shapes (dense kernels ``[out, in]``, the packed QKV kernel
``[3E, E]``), plus the raw ``*_amax`` values of QAT models.  Builders wrap the arrays in
``trt.Weights`` / ``trt.PluginField`` themselves.

Bad input (missing or corrupt files, unknown tensor names, shapes that disagree with the
configuration) raises ``WeightLoadError`` or ``ConfigError`` with a one-line message.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

WeightMap = dict[str, np.ndarray]

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

EMBEDDING_NAMES = (
    "bert_embeddings_layernorm_beta",
    "bert_embeddings_layernorm_gamma",
    "bert_embeddings_word_embeddings",
    "bert_embeddings_token_type_embeddings",
    "bert_embeddings_position_embeddings",
)

_LAYER_WEIGHT = (
    r"attention_self_(?:qkv|query|key|value)_(?:kernel|bias)"
    r"|(?:attention_output|intermediate|output)_dense_(?:kernel|bias)"
    r"|(?:attention_output|output)_layernorm_(?:beta|gamma)"
)
_WEIGHT_NAME = re.compile(
    rf"(?:{'|'.join(EMBEDDING_NAMES)}|l\d+_(?:{_LAYER_WEIGHT})|cls_{SQD_W}|cls_{SQD_B})"
)


class WeightLoadError(ValueError):
    """A weight file is missing, unreadable, or holds tensors the builders cannot use."""


class ConfigError(ValueError):
    """The model configuration is missing, unreadable or unsupported."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (library errors are often multi-line)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class BertConfig:
    """Model dimensions (from bert_config.json / config.json) plus the build options."""

    num_attention_heads: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    use_fp16: bool = False
    use_int8: bool = False
    use_strict: bool = False
    use_fc2_gemm: bool = False
    use_int8_skipln: bool = False
    use_int8_multihead: bool = False
    use_qat: bool = False
    use_sparsity: bool = False
    timing_cache: str | None = None
    distributive_independence: bool = False
    use_deprecated_plugins: bool = True
    interleaved: bool = False
    is_calib_mode: bool = False
    use_fp8: bool = False

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


_DIMENSION_KEYS = ("num_attention_heads", "hidden_size", "intermediate_size", "num_hidden_layers")
# HF activations whose engine equivalent is the builders' tanh GELU ("gelu" is the erf form,
# which the tanh form approximates to ~1e-3; Google's BERT checkpoints were trained with tanh).
HF_GELU_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} does not hold a JSON object")
    return data


def _dimensions(data: dict, path: str) -> dict[str, int]:
    dims: dict[str, int] = {}
    for key in _DIMENSION_KEYS:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{path}: {key!r} must be a positive integer, found {value!r}")
        dims[key] = value
    if dims["hidden_size"] % dims["num_attention_heads"]:
        raise ConfigError(
            f"{path}: hidden_size {dims['hidden_size']} is not divisible by "
            f"num_attention_heads {dims['num_attention_heads']}"
        )
    return dims


def bert_config_path(config_dir: str) -> str:
    return os.path.join(config_dir, "bert_config.json")


def load_bert_config(path: str, **options: bool | str | None) -> BertConfig:
    """Dimensions from a Google-style ``bert_config.json``; ``options`` are BertConfig build fields."""
    return BertConfig(**_dimensions(_read_json(path), path), **options)  # type: ignore[arg-type]


def load_hf_config(folder: str, **options: bool | str | None) -> BertConfig:
    """Dimensions from a HuggingFace BERT folder's ``config.json``, refusing what the engine cannot run."""
    path = os.path.join(folder, "config.json")
    data = _read_json(path)
    if data.get("model_type", "bert") != "bert":
        raise ConfigError(f"{path}: model_type is {data.get('model_type')!r}, only 'bert' is supported")
    activation = data.get("hidden_act", "gelu")
    if activation not in HF_GELU_ACTIVATIONS:
        raise ConfigError(
            f"{path}: hidden_act {activation!r} is not supported (the engine computes GELU; "
            f"supported: {', '.join(HF_GELU_ACTIVATIONS)})"
        )
    position_type = data.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ConfigError(f"{path}: position_embedding_type {position_type!r} is not supported (only 'absolute')")
    return BertConfig(**_dimensions(data, path), **options)  # type: ignore[arg-type]


def default_calibration_cache_name(config: BertConfig, sequence_lengths: Sequence[int]) -> str:
    """The PTQ cache name of §6.1; its H field is the head size, as in the original demo."""
    seqs = "-".join(str(s) for s in sequence_lengths)
    return f"BertSquadL{config.num_hidden_layers}H{config.head_size}A{config.num_attention_heads}S{seqs}CalibCache"


# ---------------------------------------------------------------------------------------------
# Name conversion and QKV packing

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
    """Map a PyTorch/ONNX (NVIDIA QAT) tensor name to the demo's weight name (§5.3)."""
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


def pack_qkv(
    query: tuple[np.ndarray, np.ndarray],
    key: tuple[np.ndarray, np.ndarray],
    value: tuple[np.ndarray, np.ndarray],
    num_heads: int,
    interleaved: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Pack per-projection ``(kernel [E, E_in], bias [E])`` pairs into the plugin's QKV layout (§5.6).

    Default order: output channel ``n*3H + {q,k,v}*H + h`` (per head).  ``interleaved``: q block,
    k block, v block (the INT8 interleaved varseqlen path).  Returns ``([3E, E_in], [3E])``.
    """
    kernel = np.stack([query[0], key[0], value[0]]).astype(np.float32)
    bias = np.stack([query[1], key[1], value[1]]).astype(np.float32)
    _, out_size, in_size = kernel.shape
    head_size = out_size // num_heads
    kernel = kernel.reshape(3, num_heads, head_size, in_size)
    bias = bias.reshape(3, num_heads, head_size)
    if not interleaved:
        kernel = kernel.transpose(1, 0, 2, 3)
        bias = bias.transpose(1, 0, 2)
    return np.ascontiguousarray(kernel.reshape(3 * out_size, in_size)), np.ascontiguousarray(bias.reshape(-1))


class _NamedTensor(NamedTuple):
    source: str  # the name in the file, for error messages
    value: np.ndarray


def _is_quantization_entry(name: str) -> bool:
    return name.endswith("_amax") or name.endswith("_mask")


def _collect(entries: Iterable[tuple[str, str, np.ndarray]], path: str) -> dict[str, _NamedTensor]:
    """Check converted names (known, unique) and keep the source name of each tensor."""
    named: dict[str, _NamedTensor] = {}
    for source, name, value in entries:
        if not (_WEIGHT_NAME.fullmatch(name) or _is_quantization_entry(name)):
            raise WeightLoadError(f"unknown tensor {source!r} in {path} (converted name {name!r})")
        if name in named:
            raise WeightLoadError(f"{path}: tensors {named[name].source!r} and {source!r} both map to {name!r}")
        named[name] = _NamedTensor(source, value)
    return named


def _pack_layers(named: dict[str, _NamedTensor], config: BertConfig, path: str) -> WeightMap:
    """Pack each layer's Q/K/V, keep amax/mask entries raw and everything else as float32."""
    weights: WeightMap = {}
    for name, (source, value) in named.items():
        match = re.fullmatch(r"(l\d+)_attention_self_(query|key|value)_(kernel|bias)", name)
        if match is None:
            if name.endswith("_amax"):
                weights[name] = np.asarray(value)
            elif name.endswith("_mask"):
                weights[name] = np.ascontiguousarray(value)
            else:
                weights[name] = np.ascontiguousarray(value, dtype=np.float32)
            continue
        layer = match.group(1)
        if f"{layer}_{WQKV}" in weights:
            continue
        parts = {}
        for projection in ("query", "key", "value"):
            kernel_name = f"{layer}_attention_self_{projection}_kernel"
            bias_name = f"{layer}_attention_self_{projection}_bias"
            for needed in (kernel_name, bias_name):
                if needed not in named:
                    raise WeightLoadError(f"{path}: {needed!r} is missing (needed to pack {layer}'s QKV)")
            kernel, bias = named[kernel_name].value, named[bias_name].value
            expected_kernel = (config.hidden_size, config.hidden_size)
            if kernel.shape != expected_kernel:
                raise WeightLoadError(
                    f"{path}: {named[kernel_name].source!r} has shape {tuple(kernel.shape)}, "
                    f"expected {expected_kernel} from the config"
                )
            if bias.shape != (config.hidden_size,):
                raise WeightLoadError(
                    f"{path}: {named[bias_name].source!r} has shape {tuple(bias.shape)}, "
                    f"expected {(config.hidden_size,)} from the config"
                )
            parts[projection] = (kernel, bias)
        weights[f"{layer}_{WQKV}"], weights[f"{layer}_{BQKV}"] = pack_qkv(
            parts["query"], parts["key"], parts["value"], config.num_attention_heads, config.interleaved
        )
    return weights


# ---------------------------------------------------------------------------------------------
# Loaders


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise WeightLoadError(f"{what} not found: {path}")


def load_tf_weights(prefix: str, config: BertConfig) -> WeightMap:
    """A TensorFlow checkpoint with Google BERT variable names (§5.2); ``prefix`` as given to Saver."""
    if not os.path.isfile(prefix + ".index"):
        raise WeightLoadError(f"TF checkpoint not found: {prefix}.index does not exist")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise WeightLoadError(f"reading a TF checkpoint needs tensorflow: {first_line(exc)}") from None
    try:
        reader = tf.train.load_checkpoint(prefix)
        variables = sorted(reader.get_variable_to_shape_map())
        entries = []
        for variable in variables:
            if any(skip in variable for skip in ("adam", "global_step", "pooler")):
                continue
            value = np.asarray(reader.get_tensor(variable))
            entries.append((variable, _tf_to_trt_name(variable), value))
    except WeightLoadError:
        raise
    except Exception as exc:  # tf.errors.OpError, and IndexError/ValueError from truncated shards
        raise WeightLoadError(f"cannot read TF checkpoint {prefix}: {first_line(exc)}") from None
    named = _collect(
        ((source, name, value.T if "kernel" in name else value) for source, name, value in entries), prefix
    )
    return _pack_layers(named, config, prefix)


def _tf_to_trt_name(variable: str) -> str:
    tokens = variable.lower().split("/")
    if "encoder" in tokens:
        layer = re.search(r"\d+", variable)
        if layer is None or len(tokens) < 4:
            raise WeightLoadError(f"unknown tensor name {variable!r}: encoder variable without a layer index")
        return f"l{int(layer.group())}_" + "_".join(tokens[3:])
    return "_".join(tokens)


def _float_or_int8(value: np.ndarray) -> np.ndarray:
    return value if value.dtype == np.int8 else value.astype(np.float32)


def load_onnx_weights_and_quant(path: str, config: BertConfig) -> WeightMap:
    """Initializers of an NVIDIA QAT ONNX model (§5.3), including every ``_amax`` entry."""
    import onnx
    from onnx import numpy_helper

    _require_file(path, "ONNX model")
    try:
        model = onnx.load(path)
        entries = [
            (init.name, onnx_to_trt_name(init.name), _float_or_int8(numpy_helper.to_array(init)))
            for init in model.graph.initializer
        ]
    except WeightLoadError:
        raise
    except Exception as exc:  # protobuf DecodeError, bad raw_data sizes, external-data errors, ...
        raise WeightLoadError(f"cannot read ONNX model {path}: {first_line(exc)}") from None
    if not entries:
        raise WeightLoadError(f"ONNX model {path} has no initializers (weights)")
    return _pack_layers(_collect(entries, path), config, path)


def _torch_state_dict_entries(state_dict: dict, path: str) -> list[tuple[str, str, np.ndarray]]:
    import torch

    entries = []
    for source, tensor in state_dict.items():
        # Buffers that older transformers versions saved with the weights; the engine derives both.
        if source.endswith(("position_ids", "token_type_ids")) or "pooler" in source:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise WeightLoadError(f"{path}: entry {source!r} is a {type(tensor).__name__}, not a tensor")
        value = tensor.detach().cpu()
        array = value.numpy() if value.dtype == torch.int8 else value.float().numpy()
        entries.append((source, onnx_to_trt_name(source), array))
    return entries


def load_pytorch_weights_and_quant(path: str, config: BertConfig) -> WeightMap:
    """A PyTorch checkpoint ``{"model": state_dict}`` with NVIDIA/HF BERT names (§5.4)."""
    import torch

    _require_file(path, "PyTorch checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors, truncated zip archives, ...
        raise WeightLoadError(f"cannot read PyTorch checkpoint {path}: {first_line(exc)}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise WeightLoadError(f"PyTorch checkpoint {path} is not a dict with a 'model' state dict")
    return _pack_layers(_collect(_torch_state_dict_entries(checkpoint["model"], path), path), config, path)


def load_hf_weights(folder: str, config: BertConfig) -> WeightMap:
    """A HuggingFace ``BertForQuestionAnswering`` folder (``model.safetensors`` or ``pytorch_model.bin``)."""
    import torch

    safetensors_path = os.path.join(folder, "model.safetensors")
    bin_path = os.path.join(folder, "pytorch_model.bin")
    try:
        if os.path.isfile(safetensors_path):
            path = safetensors_path
            from safetensors.torch import load_file

            state_dict = load_file(path)
        elif os.path.isfile(bin_path):
            path = bin_path
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise WeightLoadError(f"{folder} holds neither model.safetensors nor pytorch_model.bin")
    except WeightLoadError:
        raise
    except Exception as exc:  # SafetensorError, unpickling errors, ...
        raise WeightLoadError(f"cannot read {path}: {first_line(exc)}") from None
    if not isinstance(state_dict, dict):
        raise WeightLoadError(f"{path} does not hold a state dict")
    if "qa_outputs.weight" not in state_dict:
        raise WeightLoadError(
            f"{folder} has no SQuAD head (qa_outputs.weight); build from a BertForQuestionAnswering model"
        )
    # A bare BertModel state dict (no "bert." prefix) uses the same names below the prefix.
    state_dict = {
        name if name.startswith(("bert.", "qa_outputs.")) else "bert." + name: tensor
        for name, tensor in state_dict.items()
    }
    return _pack_layers(_collect(_torch_state_dict_entries(state_dict, path), path), config, path)


def load_megatron_pickle_weights(path: str, config: BertConfig) -> WeightMap:
    """A pickled Megatron weight dictionary (§5.5): QKV is already fused, in interleaved order."""
    _require_file(path, "Megatron pickle")
    try:
        with open(path, "rb") as f:
            tensors = pickle.load(f)
    except Exception as exc:  # truncated or foreign pickles raise many kinds of errors
        raise WeightLoadError(f"cannot read Megatron pickle {path}: {first_line(exc)}") from None
    if not isinstance(tensors, dict):
        raise WeightLoadError(f"Megatron pickle {path} does not hold a dict")
    renames = (
        ("embedding_", "embeddings_"),
        ("tokentype_", "token_type_"),
        ("_av", "_self_av"),
        ("_qv", "_self_qv"),
        ("query_key_value", "self_qkv"),
    )
    final_amax = f"l{config.num_hidden_layers - 1}_output_layernorm_output_quantizer_amax"
    entries = []
    for source, value in tensors.items():
        if "scale" in source:
            continue
        name = onnx_to_trt_name(source)
        for old, new in renames:
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
    weights = _pack_layers(_collect(entries, path), config, path)
    for name in [n for n in weights if n.endswith("_qkv_input_amax")]:
        for projection in ("query", "key", "value"):
            weights[name.replace("_qkv_input_amax", f"_{projection}_input_amax")] = weights[name]
    return weights


# ---------------------------------------------------------------------------------------------
# Checks against the configuration


def expected_weight_shapes(config: BertConfig) -> dict[str, tuple[int | None, ...]]:
    """Logical shape of every weight the fixed/varseqlen builders read (None: any size)."""
    e, i = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int | None, ...]] = {
        "bert_embeddings_layernorm_beta": (e,),
        "bert_embeddings_layernorm_gamma": (e,),
        "bert_embeddings_word_embeddings": (None, e),
        "bert_embeddings_token_type_embeddings": (None, e),
        "bert_embeddings_position_embeddings": (None, e),
        f"cls_{SQD_W}": (2, e),
        f"cls_{SQD_B}": (2,),
    }
    for layer in range(config.num_hidden_layers):
        p = f"l{layer}_"
        shapes.update(
            {
                p + WQKV: (3 * e, e),
                p + BQKV: (3 * e,),
                p + W_AOUT: (e, e),
                p + B_AOUT: (e,),
                p + "attention_output_layernorm_beta": (e,),
                p + "attention_output_layernorm_gamma": (e,),
                p + W_MID: (i, e),
                p + B_MID: (i,),
                p + W_LOUT: (e, i),
                p + B_LOUT: (e,),
                p + "output_layernorm_beta": (e,),
                p + "output_layernorm_gamma": (e,),
            }
        )
    return shapes


def check_weights(weights: WeightMap, config: BertConfig, max_sequence_length: int | None = None) -> None:
    """Every weight the config needs is present with its shape, and nothing else is left over."""
    expected = expected_weight_shapes(config)
    for name, shape in expected.items():
        if name not in weights:
            raise WeightLoadError(f"weight {name!r} is missing (the config has {config.num_hidden_layers} layers)")
        found = weights[name].shape
        if len(found) != len(shape) or any(want is not None and want != got for want, got in zip(shape, found)):
            wanted = "(" + ", ".join("any" if d is None else str(d) for d in shape) + ")"
            raise WeightLoadError(f"weight {name!r} has shape {tuple(found)}, the config expects {wanted}")
    for name in weights:
        if name not in expected and not _is_quantization_entry(name):
            raise WeightLoadError(
                f"weight {name!r} does not fit the config "
                f"({config.num_hidden_layers} layers, hidden size {config.hidden_size})"
            )
    positions = weights["bert_embeddings_position_embeddings"].shape[0]
    if max_sequence_length is not None and max_sequence_length > positions:
        raise WeightLoadError(
            f"sequence length {max_sequence_length} exceeds the {positions} position embeddings of the model"
        )
