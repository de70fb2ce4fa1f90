"""HuggingFace ``*ForQuestionAnswering`` folders (config.json + model.safetensors or pytorch_model.bin).

``config.json``'s ``model_type`` picks the family (``FAMILIES``); a model type no family covers
is refused with a one-line ``ConfigError`` naming it.
"""

from __future__ import annotations

import os

from bert_weights.config import BertConfig, read_json
from bert_weights.errors import ConfigError
from bert_weights.hf_bert import BERT
from bert_weights.hf_family import HFFamily, config_for, read_folder_arrays, require_qa_head
from bert_weights.weight_map import WeightMap, weight_map

FAMILIES: dict[str, HFFamily] = {"bert": BERT}


def hf_config_path(folder: str) -> str:
    return os.path.join(folder, "config.json")


def family_of(data: dict, path: str) -> HFFamily:
    """The family of a config.json's ``model_type`` (BERT when the key is absent)."""
    model_type = data.get("model_type", "bert")
    if model_type not in FAMILIES:
        supported = ", ".join(repr(name) for name in FAMILIES)
        raise ConfigError(f"{path}: model_type {model_type!r} is not supported by the engine (supported: {supported})")
    return FAMILIES[model_type]


def load_hf_config(folder: str, **options: bool | str | None) -> BertConfig:
    """Dimensions from a HuggingFace folder's ``config.json``, refusing what the engine cannot run."""
    path = hf_config_path(folder)
    data = read_json(path)
    return config_for(family_of(data, path), data, path, **options)


def load_hf_weights(folder: str, config: BertConfig) -> WeightMap:
    """The weights of a HuggingFace QA folder, translated by its family's loader."""
    config_path = hf_config_path(folder)
    data = read_json(config_path) if os.path.isfile(config_path) else {}
    family = family_of(data, config_path)
    path, arrays = read_folder_arrays(folder)
    require_qa_head(arrays, folder, family)
    return weight_map(family.entries(arrays, data, path), config, path)
