"""What a HuggingFace model family contributes to ``builder.py --hf``: its config and its weight names.

Each ``*ForQuestionAnswering`` family the engine builds is one ``HFFamily``: ``dimensions`` reads
the BertConfig fields from the folder's config.json, ``entries`` translates the folder's state
dict (as numpy arrays) into the demo's names.  Families add no math of their own here: where a
family computes something the BERT network does not, its loader refuses the config.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file

from bert_weights.config import BertConfig
from bert_weights.errors import ConfigError, WeightLoadError, first_line
from bert_weights.pytorch import state_dict_arrays
from bert_weights.weight_map import Entry

SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"
QA_HEAD = "qa_outputs.weight"
# HF activations whose engine equivalent is the builders' tanh GELU ("gelu" is the erf form,
# which the tanh form approximates to ~1e-3; Google's BERT checkpoints were trained with tanh).
HF_GELU_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class HFFamily:
    """One HuggingFace model family: how its config.json and state dict map onto the BERT network."""

    architecture: str
    """The QA class whose folders this family reads, for messages (e.g. BertForQuestionAnswering)."""
    dimensions: Callable[[dict, str], dict]
    """BertConfig fields (dimensions and model facts) from config.json's data and path."""
    entries: Callable[[dict[str, np.ndarray], dict, str], list[Entry]]
    """(source, demo name, array) entries from the state dict's arrays, config.json's data and the path."""


def check_activation(data: dict, path: str, key: str = "hidden_act") -> None:
    activation = data.get(key, "gelu")
    if activation not in HF_GELU_ACTIVATIONS:
        raise ConfigError(
            f"{path}: {key} {activation!r} is not supported (the engine computes GELU; "
            f"supported: {', '.join(HF_GELU_ACTIVATIONS)})"
        )


def check_absolute_positions(data: dict, path: str) -> None:
    position_type = data.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ConfigError(f"{path}: position_embedding_type {position_type!r} is not supported (only 'absolute')")


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


def config_for(family: HFFamily, data: dict, path: str, **options: bool | str | None) -> BertConfig:
    return BertConfig(**family.dimensions(data, path), **options)  # type: ignore[arg-type]
