"""PyTorch checkpoints ``{"model": state_dict}`` with NVIDIA/HuggingFace BERT names."""

from __future__ import annotations

import numpy as np
import torch

from bert_weights.config import BertConfig
from bert_weights.errors import WeightLoadError, first_line
from bert_weights.names import onnx_to_trt_name
from bert_weights.weight_map import Entry, WeightMap, require_file, weight_map

# Buffers that older transformers versions saved with the weights (the engine derives both),
# and the pooler, which the SQuAD network does not use.
SKIPPED_SUFFIXES = ("position_ids", "token_type_ids")


def state_dict_arrays(state_dict: dict, path: str) -> dict[str, np.ndarray]:
    """A state dict's tensors as numpy arrays (int8 kept, everything else float32), buffers and pooler left out."""
    arrays = {}
    for source, tensor in state_dict.items():
        if source.endswith(SKIPPED_SUFFIXES) or "pooler" in source:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise WeightLoadError(f"{path}: entry {source!r} is a {type(tensor).__name__}, not a tensor")
        value = tensor.detach().cpu()
        arrays[source] = value.numpy() if value.dtype == torch.int8 else value.float().numpy()
    return arrays


def bert_entries(arrays: dict[str, np.ndarray]) -> list[Entry]:
    """Entries of arrays under NVIDIA/HuggingFace BERT names."""
    return [(source, onnx_to_trt_name(source), value) for source, value in arrays.items()]


def read_torch_file(path: str, what: str) -> object:
    """``torch.load`` of a weights-only file, with a one-line error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors, truncated zip archives, ...
        raise WeightLoadError(f"cannot read {what} {path}: {first_line(exc)}") from None


def load_pytorch_weights_and_quant(path: str, config: BertConfig) -> WeightMap:
    """A PyTorch checkpoint ``{"model": state_dict}`` with NVIDIA/HF BERT names."""
    require_file(path, "PyTorch checkpoint")
    checkpoint = read_torch_file(path, "PyTorch checkpoint")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise WeightLoadError(f"PyTorch checkpoint {path} is not a dict with a 'model' state dict")
    return weight_map(bert_entries(state_dict_arrays(checkpoint["model"], path)), config, path)
