"""HuggingFace ``DistilBertForQuestionAnswering`` folders.

DistilBERT is BERT's layer with other names (``q_lin``, ``sa_layer_norm``, ``ffn.lin1``, ...) and
other config keys (``dim``, ``n_heads``, ``hidden_dim``, ``n_layers``, ``activation``).  It has no
token types: the loader gives the embedding plugin a single all-zero token-type row, so the
embedding sum is word + position as in DistilBERT, and every segment id must be 0.
"""

from __future__ import annotations

import numpy as np

from bert_weights.config import positive_int
from bert_weights.errors import ConfigError
from bert_weights.hf_family import HFFamily, embedding_and_head_renames, gelu_form, renamed_entries, with_prefix
from bert_weights.weight_map import Entry

# Source name of the token-type row the loader adds, for messages.
NO_TOKEN_TYPES = "(no token types: one zero row)"
_LAYER = r"distilbert\.transformer\.layer\.(\d+)\."
_PARAMETER = {"weight": "kernel", "bias": "bias"}
_NORM = {"weight": "gamma", "bias": "beta"}
RENAMES = [
    *embedding_and_head_renames("distilbert.embeddings."),
    *[
        (_LAYER + module + r"\." + parameter, r"l\1_" + name + "_" + suffix)
        for module, name in (
            (r"attention\.q_lin", "attention_self_query"),
            (r"attention\.k_lin", "attention_self_key"),
            (r"attention\.v_lin", "attention_self_value"),
            (r"attention\.out_lin", "attention_output_dense"),
            (r"ffn\.lin1", "intermediate_dense"),
            (r"ffn\.lin2", "output_dense"),
        )
        for parameter, suffix in _PARAMETER.items()
    ],
    *[
        (_LAYER + module + r"\." + parameter, r"l\1_" + name + "_" + suffix)
        for module, name in (("sa_layer_norm", "attention_output_layernorm"), ("output_layer_norm", "output_layernorm"))
        for parameter, suffix in _NORM.items()
    ],
]
DIMENSIONS = {"dim": "hidden_size", "n_heads": "num_attention_heads", "hidden_dim": "intermediate_size",
              "n_layers": "num_hidden_layers"}


def distilbert_dimensions(data: dict, path: str) -> dict:
    dims = {bert_key: positive_int(data, key, path) for key, bert_key in DIMENSIONS.items()}
    if data["dim"] % data["n_heads"]:
        raise ConfigError(f"{path}: dim {data['dim']} is not divisible by n_heads {data['n_heads']}")
    return {**dims, "model_type": "distilbert", "gelu": gelu_form(data, path, "activation")}


def distilbert_entries(arrays: dict[str, np.ndarray], data: dict, path: str) -> list[Entry]:
    token_types = (NO_TOKEN_TYPES, "bert_embeddings_token_type_embeddings", np.zeros((1, data["dim"]), np.float32))
    return [*renamed_entries(with_prefix(arrays, "distilbert."), RENAMES), token_types]


DISTILBERT = HFFamily("DistilBertForQuestionAnswering", "wordpiece", distilbert_dimensions, distilbert_entries)
