"""What a HuggingFace model family contributes to ``builder.py --hf``: its config and its weight names.

Each ``*ForQuestionAnswering`` family the engine builds is one ``HFFamily``: ``dimensions`` reads
the BertConfig fields from the folder's config.json, ``entries`` translates the folder's state
dict (as numpy arrays) into the demo's names and layouts.  What a family computes differently is
stated in its config fields (``gelu``, ``embedding_size``) or expressed by a layout (RoBERTa's
shifted position table, DistilBERT's single zero token-type row, ALBERT's shared layer repeated);
a family whose math the network cannot express is refused with a one-line ConfigError.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file

from bert_weights.config import BertConfig, positive_int
from bert_weights.errors import ConfigError, WeightLoadError, first_line
from bert_weights.pytorch import state_dict_arrays
from bert_weights.weight_map import Entry

SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"
QA_HEAD = "qa_outputs.weight"
# HF activation names → the GELU form the network computes (BertConfig.gelu).
HF_GELU_FORMS = {"gelu": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


@dataclass(frozen=True)
class HFFamily:
    """One HuggingFace model family: how its config.json and state dict map onto the BERT network."""

    architecture: str
    """The QA class whose folders this family reads, for messages (e.g. BertForQuestionAnswering)."""
    tokenizer: str
    """The tokenizer kind its checkpoints ship (wordpiece, bpe, unigram), when the folder does not say."""
    dimensions: Callable[[dict, str], dict]
    """BertConfig fields (dimensions and model facts) from config.json's data and path."""
    entries: Callable[[dict[str, np.ndarray], dict, str], list[Entry]]
    """(source, demo name, array) entries from the state dict's arrays, config.json's data and the path."""


def gelu_form(data: dict, path: str, key: str = "hidden_act") -> str:
    """BertConfig.gelu of config.json's activation; ConfigError for one the engine does not compute."""
    activation = data.get(key, "gelu")
    if activation not in HF_GELU_FORMS:
        raise ConfigError(
            f"{path}: {key} {activation!r} is not supported (the engine computes GELU; "
            f"supported: {', '.join(HF_GELU_FORMS)})"
        )
    return HF_GELU_FORMS[activation]


def check_absolute_positions(data: dict, path: str) -> None:
    position_type = data.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ConfigError(f"{path}: position_embedding_type {position_type!r} is not supported (only 'absolute')")


def embedding_size(data: dict, path: str) -> int | None:
    """config.json's embedding_size where it differs from hidden_size (a projection follows), else None."""
    if data.get("embedding_size") in (None, data.get("hidden_size")):
        return None
    return positive_int(data, "embedding_size", path)


def read_folder_arrays(folder: str) -> tuple[str, dict[str, np.ndarray]]:
    """(weights file, its tensors as arrays) of a HuggingFace folder: model.safetensors, else pytorch_model.bin."""
    safetensors_path = os.path.join(folder, SAFETENSORS_FILE)
    bin_path = os.path.join(folder, PYTORCH_FILE)
    if os.path.isfile(safetensors_path):
        path = safetensors_path
    elif os.path.isfile(bin_path):
        path = bin_path
    else:
        raise WeightLoadError(f"{folder} holds neither {SAFETENSORS_FILE} nor {PYTORCH_FILE}")
    try:
        if path == safetensors_path:
            state_dict = load_file(path)
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # SafetensorError, unpickling errors, ...
        raise WeightLoadError(f"cannot read {path}: {first_line(exc)}") from None
    if not isinstance(state_dict, dict):
        raise WeightLoadError(f"{path} does not hold a state dict")
    return path, state_dict_arrays(state_dict, path)


def require_qa_head(arrays: dict[str, np.ndarray], folder: str, family: HFFamily) -> None:
    if QA_HEAD not in arrays:
        raise WeightLoadError(
            f"{folder} has no SQuAD head ({QA_HEAD}); build from a {family.architecture} model"
        )


def with_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Arrays of a bare encoder state dict (no ``prefix``) under the QA model's names; the QA head keeps its name."""
    return {
        name if name.startswith((prefix, "qa_outputs.")) else prefix + name: value for name, value in arrays.items()
    }


def embedding_and_head_renames(prefix: str) -> list[tuple[str, str]]:
    """``renamed_entries`` pairs of the embedding tables and their LayerNorm under ``prefix``
    (e.g. ``albert.embeddings.``) and of the QA head."""
    renames = [
        (re.escape(f"{prefix}{table}.weight"), f"bert_embeddings_{table}")
        for table in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    ]
    return renames + [
        (re.escape(f"{prefix}LayerNorm.weight"), "bert_embeddings_layernorm_gamma"),
        (re.escape(f"{prefix}LayerNorm.bias"), "bert_embeddings_layernorm_beta"),
        (r"qa_outputs\.weight", "cls_squad_output_weights"),
        (r"qa_outputs\.bias", "cls_squad_output_bias"),
    ]


def renamed_entries(arrays: dict[str, np.ndarray], renames: list[tuple[str, str]]) -> list[Entry]:
    """Entries named by the first ``(pattern, replacement)`` whose regex matches the whole source name;
    a name no pattern matches keeps its own name (and ``collect`` refuses it as unknown)."""
    entries = []
    for source, value in arrays.items():
        for pattern, replacement in renames:
            name, count = re.subn(rf"^{pattern}$", replacement, source)
            if count:
                break
        entries.append((source, name, value))
    return entries


def config_for(family: HFFamily, data: dict, path: str, **options: bool | str | None) -> BertConfig:
    return BertConfig(**family.dimensions(data, path), **options)  # type: ignore[arg-type]
