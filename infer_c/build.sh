#!/usr/bin/env bash
# Configure and build the infer_c Python module and the perf binary into build/ (needs TensorRT,
# the CUDA toolkit, a C++17 compiler, CMake >= 3.18 and pybind11 installed for $PYTHON).
# Extra arguments go to the configure step, e.g. -DTRT_INCLUDE_DIR=<dir> -DTRT_LIB_DIR=<dir>.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(command -v "${PYTHON:-python3}")
cmake -S . -B build -DPython_EXECUTABLE="$python" "$@"
cmake --build build -j "$(nproc)"
