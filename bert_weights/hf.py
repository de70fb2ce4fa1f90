"""HuggingFace ``*ForQuestionAnswering`` folders (config.json + model.safetensors or pytorch_model.bin).

``config.json``'s ``model_type`` picks the family (``FAMILIES``); a model type no family covers
is refused with a one-line ``ConfigError`` naming it.
"""

from __future__ import annotations

import os

from bert_weights.config import BertConfig, read_json
from bert_weights.errors import ConfigError
from bert_weights.hf_albert import ALBERT
from bert_weights.hf_bert import BERT
from bert_weights.hf_distilbert import DISTILBERT
from bert_weights.hf_electra import ELECTRA
from bert_weights.hf_family import HFFamily, config_for, read_folder_arrays, require_qa_head
from bert_weights.hf_roberta import ROBERTA, XLM_ROBERTA
from bert_weights.weight_map import WeightMap, weight_map
from helpers.files import VOCAB_FILE_MAX_BYTES

# model_type → family.  Encoders whose attention or embeddings the BERT network cannot compute
# (DeBERTa's disentangled attention, relative positions, rotary embeddings, ...) have no entry.
FAMILIES: dict[str, HFFamily] = {
    "bert": BERT,
    "roberta": ROBERTA,
    "xlm-roberta": XLM_ROBERTA,
    "distilbert": DISTILBERT,
    "electra": ELECTRA,
    "albert": ALBERT,
}


TOKENIZER_FILE = "tokenizer.json"


def hf_config_path(folder: str) -> str:
    return os.path.join(folder, "config.json")


def family_of(data: dict, path: str) -> HFFamily:
    """The family of a config.json's ``model_type`` (BERT when the key is absent)."""
    model_type = data.get("model_type", "bert")
    if model_type not in FAMILIES:
        supported = ", ".join(repr(name) for name in FAMILIES)
        raise ConfigError(f"{path}: model_type {model_type!r} is not supported by the engine (supported: {supported})")
    return FAMILIES[model_type]


def tokenizer_kind(folder: str, family: HFFamily) -> str:
    """The kind of the folder's tokenizer.json model (``bpe``, ``unigram``, ``wordpiece``, ...), else the family's."""
    path = os.path.join(folder, TOKENIZER_FILE)
    if not os.path.isfile(path):
        return family.tokenizer
    model = read_json(path, VOCAB_FILE_MAX_BYTES, "tokenizer file").get("model")
    if not isinstance(model, dict) or not isinstance(model.get("type"), str):
        raise ConfigError(f"{path}: no tokenizer model type (model.type)")
    return model["type"].lower()


def load_hf_config(folder: str, **options: bool | str | None) -> BertConfig:
    """Dimensions from a HuggingFace folder's ``config.json``, refusing what the engine cannot run."""
    path = hf_config_path(folder)
    data = read_json(path)
    family = family_of(data, path)
    return config_for(family, data, path, tokenizer=tokenizer_kind(folder, family), **options)


def load_hf_weights(folder: str, config: BertConfig) -> WeightMap:
    """The weights of a HuggingFace QA folder, translated by its family's loader."""
    config_path = hf_config_path(folder)
    data = read_json(config_path) if os.path.isfile(config_path) else {}
    family = family_of(data, config_path)
    model_type = data.get("model_type", "bert")
    if model_type != config.model_type:
        raise ConfigError(
            f"{config_path}: the folder's model_type is {model_type!r}, but the configuration in use is for "
            f"{config.model_type!r}; build it with its own config.json (without -c)"
        )
    path, arrays = read_folder_arrays(folder)
    require_qa_head(arrays, folder, family)
    return weight_map(family.entries(arrays, data, path), config, path)
