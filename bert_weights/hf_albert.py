"""HuggingFace ``AlbertForQuestionAnswering`` folders.

ALBERT factorizes the embeddings: the tables and their LayerNorm are ``embedding_size`` wide and
``embedding_hidden_mapping_in`` projects them to the hidden size.  Its layers are shared: the
``num_hidden_layers`` steps of the encoder run the layers of ``num_hidden_groups`` groups (step
``i`` runs group ``i * groups // layers``), each group ``inner_group_num`` layers deep.  The
loader unrolls that into ``num_hidden_layers * inner_group_num`` engine layers, every one of them
the same arrays as the shared layer it runs.  Within a layer the names differ from BERT's
(``attention.dense``, ``ffn``, ``ffn_output``, ``full_layer_layer_norm``), the math does not.
"""

from __future__ import annotations

import re

import numpy as np

from bert_weights.config import dimensions, positive_int
from bert_weights.errors import ConfigError
from bert_weights.hf_family import (
    HFFamily,
    check_absolute_positions,
    embedding_and_head_renames,
    gelu_form,
    renamed_entries,
    with_prefix,
)
from bert_weights.names import EMB_PROJ_B, EMB_PROJ_W
from bert_weights.weight_map import Entry

_SHARED_LAYER = re.compile(r"albert\.encoder\.albert_layer_groups\.(\d+)\.albert_layers\.(\d+)\.(.+)")
LAYER_RENAMES = {
    "attention.query": "attention_self_query",
    "attention.key": "attention_self_key",
    "attention.value": "attention_self_value",
    "attention.dense": "attention_output_dense",
    "ffn": "intermediate_dense",
    "ffn_output": "output_dense",
}
LAYER_NORMS = {"attention.LayerNorm": "attention_output_layernorm", "full_layer_layer_norm": "output_layernorm"}
RENAMES = [
    *embedding_and_head_renames("albert.embeddings."),
    (r"albert\.encoder\.embedding_hidden_mapping_in\.weight", EMB_PROJ_W),
    (r"albert\.encoder\.embedding_hidden_mapping_in\.bias", EMB_PROJ_B),
]


def layer_structure(data: dict, path: str) -> tuple[int, int, int]:
    """(num_hidden_layers, num_hidden_groups, inner_group_num), checked to divide evenly."""
    steps = positive_int(data, "num_hidden_layers", path)
    groups = positive_int({"num_hidden_groups": 1, **data}, "num_hidden_groups", path)
    inner = positive_int({"inner_group_num": 1, **data}, "inner_group_num", path)
    if steps % groups:
        raise ConfigError(f"{path}: num_hidden_layers {steps} is not a multiple of num_hidden_groups {groups}")
    return steps, groups, inner


def albert_dimensions(data: dict, path: str) -> dict:
    check_absolute_positions(data, path)
    steps, _, inner = layer_structure(data, path)
    return {
        **dimensions(data, path),
        "num_hidden_layers": steps * inner,
        "model_type": "albert",
        "gelu": gelu_form(data, path),
        # The projection is always there, even where the widths agree (HF's default width is 128).
        "embedding_size": positive_int({"embedding_size": 128, **data}, "embedding_size", path),
    }


def shared_layer_name(module: str, parameter: str) -> str | None:
    """The demo's name (without the ``l{n}_`` prefix) of one shared-layer parameter, or None."""
    if module in LAYER_RENAMES:
        return LAYER_RENAMES[module] + "_" + ("kernel" if parameter == "weight" else parameter)
    if module in LAYER_NORMS:
        return LAYER_NORMS[module] + "_" + ("gamma" if parameter == "weight" else "beta")
    return None


def albert_entries(arrays: dict[str, np.ndarray], data: dict, path: str) -> list[Entry]:
    arrays = with_prefix(arrays, "albert.")
    steps, groups, inner = layer_structure(data, path)
    shared: dict[tuple[int, int], list[tuple[str, str | None, np.ndarray]]] = {}
    others = {}
    for source, value in arrays.items():
        match = _SHARED_LAYER.fullmatch(source)
        if match is None:
            others[source] = value
            continue
        module, _, parameter = match.group(3).rpartition(".")
        key = (int(match.group(1)), int(match.group(2)))
        shared.setdefault(key, []).append((source, shared_layer_name(module, parameter), value))
    entries = renamed_entries(others, RENAMES)
    for step in range(steps):
        group = step * groups // steps
        for depth in range(inner):
            layer = step * inner + depth
            # An unknown parameter keeps its source name, which collect() refuses by name.
            entries += [(source, source if name is None else f"l{layer}_{name}", value)
                        for source, name, value in shared.get((group, depth), [])]
    return entries


ALBERT = HFFamily("AlbertForQuestionAnswering", "unigram", albert_dimensions, albert_entries)
