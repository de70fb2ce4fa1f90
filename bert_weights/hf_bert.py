"""HuggingFace ``BertForQuestionAnswering`` folders: the network's own names, under ``bert.``."""

from __future__ import annotations

import numpy as np

from bert_weights.config import dimensions
from bert_weights.hf_family import HFFamily, check_absolute_positions, check_activation, with_prefix
from bert_weights.pytorch import bert_entries
from bert_weights.weight_map import Entry


def bert_dimensions(data: dict, path: str) -> dict:
    check_activation(data, path)
    check_absolute_positions(data, path)
    return {**dimensions(data, path), "model_type": "bert"}


def bert_hf_entries(arrays: dict[str, np.ndarray], data: dict, path: str) -> list[Entry]:
    # A bare BertModel state dict (no "bert." prefix) uses the same names below the prefix.
    return bert_entries(with_prefix(arrays, "bert."))


BERT = HFFamily("BertForQuestionAnswering", bert_dimensions, bert_hf_entries)
