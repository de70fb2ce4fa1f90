#!/usr/bin/env bash
# Create .venv with the runtime and test requirements (CPU PyTorch where no GPU build is wanted).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU wheel of torch 2.13.0 is what this project's CPU machines install; GPU users bring their own torch.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
# tensorrt-stubs declares a dependency on the real tensorrt wheel, which only NVIDIA's index serves.
.venv/bin/python -m pip install -q --no-deps "tensorrt-stubs>=10.0"
