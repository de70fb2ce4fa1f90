#!/usr/bin/env bash
# Create .venv-serving: tritonserver (PyPI nvidia-pytriton) plus what the served models import.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-serving/bin/python ] || python3 -m venv .venv-serving
.venv-serving/bin/python -m pip install -q --upgrade pip
# Same torch as scripts/setup_env.sh installs (the CPU wheel on this project's CPU machines).
.venv-serving/bin/python -c "import torch" 2>/dev/null || .venv-serving/bin/python -m pip install -q "torch==2.13.0"
.venv-serving/bin/python -m pip install -q -r requirements-serving.txt
