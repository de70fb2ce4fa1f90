"""Self-check: what this machine can run, and what is missing for each feature.

Run ``python3 -m helpers.doctor``.  It prints versions (Python, PyTorch, CUDA, TensorRT), the GPU
and its compute capability, whether TensorRT's plugin library loads, which backend ``auto``
picks, then one line per feature: ``ready`` or what it still needs, and the portable engine's
kernel switches as the environment sets them.  Always exits 0.
"""

from __future__ import annotations

import ctypes
import importlib.util
import platform
import shutil
import sys
from dataclasses import dataclass, field

import torch

from helpers import backend
from helpers.cli import RunnerError
from helpers.portable.options import EngineOptions
from helpers.portable.device import ENV_DEVICE
from helpers.runner import PLUGIN_LIBRARY, PLUGIN_PATH_VARIABLE, portable_device


@dataclass
class Machine:
    cuda: bool
    gpu: str | None
    compute_capability: tuple[int, int] | None
    tensorrt_version: str | None
    plugin_library: bool
    modules: dict[str, bool] = field(default_factory=dict)
    tools: dict[str, bool] = field(default_factory=dict)
    device_problem: str | None = None
    """Why the portable engine's default device (DEMOBERT_DEVICE) cannot be used; None when it can."""


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _plugin_library_loads() -> bool:
    try:
        ctypes.CDLL(PLUGIN_LIBRARY, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


def _device_problem() -> str | None:
    try:
        portable_device()
    except RunnerError as err:
        return f"{ENV_DEVICE}: {err}"
    return None


def inspect_machine() -> Machine:
    cuda = torch.cuda.is_available()
    module = backend.import_tensorrt()
    return Machine(
        cuda=cuda,
        gpu=torch.cuda.get_device_name(0) if cuda else None,
        compute_capability=torch.cuda.get_device_capability(0) if cuda else None,
        tensorrt_version=getattr(module, "__version__", "unknown version") if module is not None else None,
        plugin_library=_plugin_library_loads(),
        modules={name: _has_module(name) for name in ("triton", "tensorflow", "onnx", "safetensors", "transformers", "tqdm", "nbclient")},
        tools={name: shutil.which(name) is not None for name in ("ngc", "wget", "curl", "cmake", "nvidia-smi")},
        device_problem=_device_problem(),
    )


def auto_backend(machine: Machine) -> str:
    """What helpers.backend.select_backend("auto") binds: TensorRT whenever it imports."""
    return "tensorrt" if machine.tensorrt_version else "portable"


def feature_needs(machine: Machine) -> list[tuple[str, list[str]]]:
    """(feature, missing pieces) for every feature; an empty list means ready."""
    cc = machine.compute_capability
    cc_value = cc[0] * 10 + cc[1] if cc else 0
    gpu = [] if machine.cuda else ["a CUDA GPU visible to PyTorch"]
    trt = [] if machine.tensorrt_version else ["TensorRT (pip install tensorrt from NVIDIA's index)"]
    plugins = [] if machine.plugin_library else [f"{PLUGIN_LIBRARY} on {PLUGIN_PATH_VARIABLE}"]
    # Portable engines load onto DEMOBERT_DEVICE unless --device says otherwise.
    device = [] if machine.device_problem is None else [f"a usable device setting ({machine.device_problem})"]
    return [
        ("portable engines on CPU (build + inference + perf)", device + ([] if machine.modules["safetensors"] else ["safetensors"])),
        ("portable engines on CUDA", gpu + device),
        ("fast CUDA kernels for the portable engine", gpu + device + ([] if machine.modules["triton"] else ["triton"])),
        ("TensorRT engines (build and run)", gpu + trt + plugins),
        ("CUDA graphs (--enable-graph)", gpu),
        ("variable-length engines on TensorRT (compute capability >= 7.2)", gpu + trt + plugins + ([] if cc_value >= 72 or not cc else [f"compute capability >= 7.2 (have {cc[0]}.{cc[1]})"])),
        ("INT8 multi-head attention -imh (compute capability >= 7.5)", gpu + trt + ([] if cc_value >= 75 or not cc else [f"compute capability >= 7.5 (have {cc[0]}.{cc[1]})"])),
        ("TensorFlow checkpoints (builder -m)", [] if machine.modules["tensorflow"] else ["tensorflow"]),
        ("ONNX QAT models (builder -x)", [] if machine.modules["onnx"] else ["onnx"]),
        ("C++ runner (infer_c, build/perf)", trt + gpu + ([] if machine.tools["cmake"] else ["cmake"])),
        ("checkpoint downloads (scripts/download_model.sh)", [] if machine.tools["ngc"] else ["the NGC CLI (ngc) and network access"]),
        ("SQuAD downloads (scripts/download_squad.sh)", [] if machine.tools["wget"] or machine.tools["curl"] else ["wget or curl and network access"]),
        ("progress bars on -sq runs", [] if machine.modules["tqdm"] else ["tqdm"]),
        ("notebook test (tests/test_notebook.py)", [] if machine.modules["nbclient"] else ["nbclient"]),
    ]


def report(machine: Machine) -> str:
    lines = [
        f"Python:          {platform.python_version()} ({sys.executable})",
        f"PyTorch:         {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})",
    ]
    if machine.cuda:
        cc = machine.compute_capability
        lines.append(f"GPU:             {machine.gpu}, compute capability {cc[0]}.{cc[1]}" if cc else f"GPU:             {machine.gpu}")
    else:
        lines.append("GPU:             none visible to PyTorch")
    if machine.tensorrt_version:
        lines.append(f"TensorRT:        {machine.tensorrt_version}")
    else:
        lines.append("TensorRT:        not installed")
    lines.append(f"Plugin library:  {PLUGIN_LIBRARY} {'loads' if machine.plugin_library else 'not found'}")
    lines.append(f"Backend 'auto':  {auto_backend(machine)}")
    lines.append("Features:")
    for feature, missing in feature_needs(machine):
        lines.append(f"  {feature}: {'ready' if not missing else 'missing ' + ', '.join(missing)}")
    lines.append("Portable engine options (from the environment; an engine reads them when it loads):")
    lines.extend(f"  {line}" for line in EngineOptions.from_environment().switches())
    return "\n".join(lines)


def main() -> int:
    print(report(inspect_machine()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
