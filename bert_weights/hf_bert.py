"""HuggingFace ``BertForQuestionAnswering`` folders: the network's own names, under ``bert.``."""

from __future__ import annotations

import numpy as np

from bert_weights.config import dimensions
from bert_weights.hf_family import HFFamily, check_absolute_positions, gelu_form, with_prefix
from bert_weights.names import onnx_to_trt_name
from bert_weights.weight_map import Entry


def bert_named_entries(arrays: dict[str, np.ndarray], prefix: str) -> list[Entry]:
    """Entries of an encoder that uses BERT's module names below ``prefix`` (``roberta.``, ``electra.``, ...).

    A bare encoder state dict (no prefix) uses the same names below it.
    """
    entries = []
    for source, value in with_prefix(arrays, prefix).items():
        bert_name = "bert." + source.removeprefix(prefix) if source.startswith(prefix) else source
        entries.append((source, onnx_to_trt_name(bert_name), value))
    return entries


def bert_dimensions(data: dict, path: str) -> dict:
    check_absolute_positions(data, path)
    return {**dimensions(data, path), "model_type": "bert", "gelu": gelu_form(data, path)}


def bert_entries(arrays: dict[str, np.ndarray], data: dict, path: str) -> list[Entry]:
    return bert_named_entries(arrays, "bert.")


BERT = HFFamily("BertForQuestionAnswering", "wordpiece", bert_dimensions, bert_entries)
