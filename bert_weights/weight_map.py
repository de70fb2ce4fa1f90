"""The weight map every loader returns, assembled and checked the same way whatever the source.

A loader yields ``(source name, demo name, array)`` entries; ``collect`` checks the names,
``pack_layers`` packs each layer's Q/K/V into the attention plugin's layout, and ``check_weights``
compares the result with the configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from bert_weights.config import BertConfig
from bert_weights.errors import WeightLoadError
from bert_weights.names import (
    B_AOUT,
    B_LOUT,
    B_MID,
    BQKV,
    EMB_PROJ_B,
    EMB_PROJ_W,
    SQD_B,
    SQD_W,
    W_AOUT,
    W_LOUT,
    W_MID,
    WEIGHT_NAME,
    WQKV,
    is_quantization_entry,
)

WeightMap = dict[str, np.ndarray]
# (name in the file, demo name, value) of one tensor, as loaders produce them.
Entry = tuple[str, str, np.ndarray]


class NamedTensor(NamedTuple):
    source: str  # the name in the file, for error messages
    value: np.ndarray


def require_file(path: str, what: str) -> None:
    if os.path.isdir(path):
        raise WeightLoadError(f"{what} path is a directory, not a file: {path}")
    if not os.path.isfile(path):
        raise WeightLoadError(f"{what} not found: {path}")


def pack_qkv(
    query: tuple[np.ndarray, np.ndarray],
    key: tuple[np.ndarray, np.ndarray],
    value: tuple[np.ndarray, np.ndarray],
    num_heads: int,
    interleaved: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Pack per-projection ``(kernel [E, E_in], bias [E])`` pairs into the plugin's QKV layout
    (docs/SPEC.md "Weights", QKV packing).

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


def collect(entries: Iterable[Entry], path: str) -> dict[str, NamedTensor]:
    """Check converted names (known, unique) and keep the source name of each tensor."""
    named: dict[str, NamedTensor] = {}
    for source, name, value in entries:
        if not (WEIGHT_NAME.fullmatch(name) or is_quantization_entry(name)):
            raise WeightLoadError(f"unknown tensor {source!r} in {path} (converted name {name!r})")
        if name in named:
            raise WeightLoadError(f"{path}: tensors {named[name].source!r} and {source!r} both map to {name!r}")
        named[name] = NamedTensor(source, value)
    return named


def pack_layers(named: dict[str, NamedTensor], config: BertConfig, path: str) -> WeightMap:
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


def weight_map(entries: Iterable[Entry], config: BertConfig, path: str) -> WeightMap:
    """The builders' weight map of a loader's entries: names checked, Q/K/V packed."""
    return pack_layers(collect(entries, path), config, path)


# ---------------------------------------------------------------------------------------------
# Checks against the configuration


def expected_weight_shapes(config: BertConfig) -> dict[str, tuple[int | None, ...]]:
    """Logical shape of every weight the fixed/varseqlen builders read (None: any size)."""
    e, i, w = config.hidden_size, config.intermediate_size, config.embedding_width
    shapes: dict[str, tuple[int | None, ...]] = {
        "bert_embeddings_layernorm_beta": (w,),
        "bert_embeddings_layernorm_gamma": (w,),
        "bert_embeddings_word_embeddings": (None, w),
        "bert_embeddings_token_type_embeddings": (None, w),
        "bert_embeddings_position_embeddings": (None, w),
        f"cls_{SQD_W}": (2, e),
        f"cls_{SQD_B}": (2,),
    }
    if config.embedding_size is not None:
        shapes.update({EMB_PROJ_W: (e, w), EMB_PROJ_B: (e,)})
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
    """Every weight the config needs is present with its shape, every value is finite, and nothing
    else is left over."""
    expected = expected_weight_shapes(config)
    for name, shape in expected.items():
        if name not in weights:
            raise WeightLoadError(f"weight {name!r} is missing (the config has {config.num_hidden_layers} layers)")
        found = weights[name].shape
        if len(found) != len(shape) or any(want is not None and want != got for want, got in zip(shape, found)):
            wanted = "(" + ", ".join("any" if d is None else str(d) for d in shape) + ")"
            raise WeightLoadError(f"weight {name!r} has shape {tuple(found)}, the config expects {wanted}")
    for name in weights:
        if name not in expected and not is_quantization_entry(name):
            raise WeightLoadError(
                f"weight {name!r} does not fit the config "
                f"({config.num_hidden_layers} layers, hidden size {config.hidden_size})"
            )
    for name, value in weights.items():
        # A NaN weight builds fine and answers every question with probability NaN.
        if not np.isfinite(value).all():
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise WeightLoadError(f"weight {name!r} holds {bad} NaN or infinite value(s) of {np.size(value)}")
    positions = weights["bert_embeddings_position_embeddings"].shape[0]
    if max_sequence_length is not None and max_sequence_length > positions:
        raise WeightLoadError(
            f"sequence length {max_sequence_length} exceeds the {positions} position embeddings of the model"
        )
