"""2:4 structured sparsity: detection, magnitude pruning, and semi-structured weights on CUDA.

A weight ``[out, in]`` is 2:4-structured when every group of four consecutive input-dimension
values holds at least two zeros; Ampere-and-later tensor cores then skip the zeros.  The builders'
``-sp`` flag (TensorRT's SPARSE_WEIGHTS) only *allows* sparse kernels for such weights; it never
prunes.  Pruning a checkpoint is a separate, explicit step::

    python3 -m helpers.sparsity IN OUT

IN is a HuggingFace model folder (``model.safetensors`` or ``pytorch_model.bin``; OUT is a new
folder with the other files copied), a PyTorch checkpoint ``{"model": state_dict}`` or a Megatron
weight pickle (OUT is a file of the same kind).  Only the encoder's dense kernels are pruned
(Q/K/V, attention output, intermediate, output), as NVIDIA's ASP recipe does for BERT; embeddings,
LayerNorms, biases and the SQuAD head stay dense.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch

from helpers.backend import trt
from helpers.cli import exit_on_interrupt
from helpers.files import write_bytes_atomically
from helpers.weight_pickle import load_weight_pickle

GROUP = 4
KEEP = 2

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

# Dense-kernel names of HF BERT (query/key/value/dense), NVIDIA QAT checkpoints (dense_act) and
# Megatron pickles (query_key_value): "<...>.encoder.<...>.<kind>.weight".
_ENCODER_KERNEL = re.compile(r".*\bencoder\b.*\.(?:query|key|value|query_key_value|dense|dense_act)\.weight")


class SparsityError(ValueError):
    """A checkpoint cannot be pruned (unreadable, unknown format, or OUT already exists)."""


def _groups(weight: ArrayT) -> ArrayT | None:
    """``weight`` as [..., in/4, 4] groups along its last (input) axis, or None if in % 4 != 0."""
    if weight.ndim < 1 or weight.shape[-1] % GROUP:
        return None
    return weight.reshape(*weight.shape[:-1], weight.shape[-1] // GROUP, GROUP)


def is_2to4(weight: np.ndarray | torch.Tensor) -> bool:
    """True when every group of 4 along the last (input) axis has at least 2 zeros."""
    groups = _groups(weight)
    if groups is None or groups.shape[-2] == 0:
        return False
    return bool(((groups == 0).sum(-1) >= GROUP - KEEP).all())


def prune_2to4(weight: ArrayT) -> ArrayT:
    """Magnitude pruning: in every group of 4 along the last axis keep the 2 largest |values|.

    Ties keep the earlier position.  Returns a new array/tensor of the same type, shape and dtype.
    """
    groups = _groups(weight)
    if groups is None:
        raise SparsityError(f"cannot prune a weight of shape {tuple(weight.shape)} to 2:4: its last axis is not a multiple of 4")
    as_torch = torch.as_tensor(groups) if isinstance(groups, np.ndarray) else groups
    magnitude = as_torch.abs().float()
    # A stable descending sort keeps the earlier of two equal magnitudes.
    order = torch.sort(magnitude, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(magnitude, dtype=torch.bool).scatter_(-1, order[..., :KEEP], True)
    pruned = torch.where(keep, as_torch, torch.zeros((), dtype=as_torch.dtype, device=as_torch.device))
    pruned = pruned.reshape(weight.shape)
    if isinstance(weight, np.ndarray):
        return pruned.numpy().astype(weight.dtype, copy=False)
    return pruned


def to_semi_structured(weight: torch.Tensor) -> torch.Tensor | None:
    """``weight`` [out, in] as a PyTorch semi-structured sparse tensor, or None where that cannot run.

    None when the weight is not 2:4, or the device/dtype/shape is outside what PyTorch's sparse
    kernels accept (CUDA SM 8.0+, fp16/bf16/int8, both dimensions multiples of the kernel tile).
    ``torch.nn.functional.linear(x, result, bias)`` then runs the sparse GEMM.
    """
    if weight.ndim != 2 or not weight.is_cuda or not is_2to4(weight):
        return None
    if torch.cuda.get_device_capability(weight.device) < (8, 0):
        return None
    try:
        return torch.sparse.to_sparse_semi_structured(weight.contiguous())
    except (RuntimeError, ValueError, NotImplementedError):
        return None


def structured_layers(network: Any) -> tuple[list[str], list[str]]:
    """(2:4-structured, not 2:4) names of the 1×1 convolutions (dense layers) of a TensorRT network.

    A layer counts as 2:4 when its ``[out, in]`` kernel is; only those can run on sparse kernels
    under ``-sp`` (TensorRT's SPARSE_WEIGHTS, or PyTorch's semi-structured GEMMs on the portable engine).
    """
    structured: list[str] = []
    dense: list[str] = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type != trt.LayerType.CONVOLUTION:
            continue
        kernel = np.asarray(layer.kernel).reshape(layer.num_output_maps, -1)
        (structured if is_2to4(kernel) else dense).append(layer.name)
    return structured, dense


# ---------------------------------------------------------------------------------------------
# Checkpoint pruning


def is_prunable_name(name: str) -> bool:
    """Encoder dense kernels (the weights NVIDIA prunes for sparse BERT)."""
    return bool(_ENCODER_KERNEL.fullmatch(name.lower()))


def prune_state(state: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """Prune the 2-D encoder dense kernels of a name→tensor/array mapping.

    Returns (new state, pruned names, names left dense because their input dim is not a multiple of 4).
    """
    pruned: dict[str, Any] = {}
    names: list[str] = []
    skipped: list[str] = []
    for name, value in state.items():
        pruned[name] = value
        if not (is_prunable_name(name) and isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 2):
            continue
        if value.shape[-1] % GROUP:
            skipped.append(name)
            continue
        pruned[name] = prune_2to4(value)
        names.append(name)
    return pruned, names, skipped


PruneResult = tuple[list[str], list[str]]


def _prune_hf_folder(source: str, target: str) -> PruneResult:
    from safetensors.torch import load_file, save

    safetensors_path = os.path.join(source, "model.safetensors")
    bin_path = os.path.join(source, "pytorch_model.bin")
    if os.path.isfile(safetensors_path):
        state = load_file(safetensors_path)
        weight_file = safetensors_path
    elif os.path.isfile(bin_path):
        state = torch.load(bin_path, map_location="cpu", weights_only=True)
        weight_file = bin_path
    else:
        raise SparsityError(f"{source} holds neither model.safetensors nor pytorch_model.bin")
    pruned, names, skipped = prune_state(state)
    parent = os.path.dirname(os.path.abspath(target))
    staging = tempfile.mkdtemp(prefix=os.path.basename(target) + ".", suffix=".tmp", dir=parent)
    try:
        for entry in os.listdir(source):
            path = os.path.join(source, entry)
            if os.path.isfile(path) and path != weight_file:
                shutil.copy2(path, os.path.join(staging, entry))
        tensors = {name: tensor.contiguous() for name, tensor in pruned.items()}
        with open(os.path.join(staging, "model.safetensors"), "wb") as f:
            f.write(save(tensors, metadata={"format": "pt"}))
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return names, skipped


def _prune_torch_checkpoint(source: str, target: str) -> PruneResult:
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise SparsityError(f"PyTorch checkpoint {source} is not a dict with a 'model' state dict")
    pruned, names, skipped = prune_state(checkpoint["model"])
    buffer = io.BytesIO()
    torch.save({**checkpoint, "model": pruned}, buffer)
    write_bytes_atomically(target, buffer.getvalue())
    return names, skipped


def _prune_pickle(source: str, target: str) -> PruneResult:
    tensors = load_weight_pickle(source)
    if not isinstance(tensors, dict):
        raise SparsityError(f"Megatron pickle {source} does not hold a dict")
    pruned, names, skipped = prune_state(tensors)
    write_bytes_atomically(target, pickle.dumps(pruned, protocol=pickle.HIGHEST_PROTOCOL))
    return names, skipped


def prune_checkpoint(source: str, target: str) -> PruneResult:
    """Write a 2:4-pruned copy of ``source`` to ``target``; return (pruned names, names left dense)."""
    if not target:
        raise SparsityError("the output path is empty")
    if os.path.exists(target):
        raise SparsityError(f"output already exists: {target}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(target))):
        raise SparsityError(f"output folder does not exist: {os.path.dirname(os.path.abspath(target))}")
    if os.path.isdir(source):
        return _prune_hf_folder(source, target)
    if not os.path.isfile(source):
        raise SparsityError(f"checkpoint not found: {source}")
    with open(source, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive; anything else is taken for a plain pickle (Megatron).
    if magic == b"PK\x03\x04":
        return _prune_torch_checkpoint(source, target)
    return _prune_pickle(source, target)


@exit_on_interrupt
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m helpers.sparsity",
        description="Prune a BERT checkpoint's encoder dense kernels to 2:4 structured sparsity (magnitude).",
    )
    parser.add_argument("input", help="HF model folder, PyTorch checkpoint ({'model': state_dict}) or Megatron pickle")
    parser.add_argument("output", help="new folder (for a HF folder) or file (otherwise); must not exist")
    args = parser.parse_args(argv)
    try:
        names, skipped = prune_checkpoint(args.input, args.output)
    except SparsityError as exc:
        print(f"sparsity: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        print(f"sparsity: error: cannot prune {args.input}: {first}", file=sys.stderr)
        return 1
    if skipped:
        print(f"sparsity: warning: left {len(skipped)} weights dense (input dim not a multiple of 4): {', '.join(skipped)}", file=sys.stderr)
    if not names:
        print(f"sparsity: warning: no prunable encoder dense kernels in {args.input}; wrote an unchanged copy", file=sys.stderr)
    print(f"Pruned {len(names)} weights to 2:4; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
