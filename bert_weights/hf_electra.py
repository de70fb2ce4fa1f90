"""HuggingFace ``ElectraForQuestionAnswering`` folders: BERT's names under ``electra.``.

Where ``embedding_size`` differs from ``hidden_size`` (ELECTRA-small), the normalized embeddings
go through ``embeddings_project``, a dense layer to the hidden size, before the first layer.
"""

from __future__ import annotations

import numpy as np

from bert_weights.config import dimensions
from bert_weights.hf_bert import bert_named_entries
from bert_weights.hf_family import HFFamily, check_absolute_positions, embedding_size, gelu_form, with_prefix
from bert_weights.names import EMB_PROJ_B, EMB_PROJ_W
from bert_weights.weight_map import Entry

PROJECTION = {"electra.embeddings_project.weight": EMB_PROJ_W, "electra.embeddings_project.bias": EMB_PROJ_B}


def electra_dimensions(data: dict, path: str) -> dict:
    check_absolute_positions(data, path)
    return {
        **dimensions(data, path),
        "model_type": "electra",
        "gelu": gelu_form(data, path),
        "embedding_size": embedding_size(data, path),
    }


def electra_entries(arrays: dict[str, np.ndarray], data: dict, path: str) -> list[Entry]:
    arrays = with_prefix(arrays, "electra.")
    projection = [(source, PROJECTION[source], arrays.pop(source)) for source in PROJECTION if source in arrays]
    return bert_named_entries(arrays, "electra.") + projection


ELECTRA = HFFamily("ElectraForQuestionAnswering", "wordpiece", electra_dimensions, electra_entries)
