#!/usr/bin/env bash
# Compile every translation unit of infer_c against the given TensorRT and CUDA headers (no linking,
# no GPU needed). Usage: infer_c/check_headers.sh <dir with NvInfer.h> <dir with cuda_runtime_api.h>
# The Python and pybind11 headers come from $PYTHON (default: python3) via `python -m pybind11 --includes`.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 TRT_INCLUDE_DIR CUDA_INCLUDE_DIR" >&2
    exit 2
fi
trt_include=$1
cuda_include=$2
[ -f "$trt_include/NvInfer.h" ] || { echo "error: no NvInfer.h in $trt_include" >&2; exit 1; }
[ -f "$cuda_include/cuda_runtime_api.h" ] || { echo "error: no cuda_runtime_api.h in $cuda_include" >&2; exit 1; }
python=${PYTHON:-python3}
# Third-party headers are system includes so that only warnings from infer_c itself are shown.
python_includes=$("$python" -m pybind11 --includes | sed 's/-I/-isystem /g')
source_dir=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's/^#define TRT_\(MAJOR\|MINOR\|PATCH\)_ENTERPRISE \([0-9]*\).*/\2/p' "$trt_include/NvInferVersion.h" | paste -sd.)
echo "Checking infer_c against TensorRT ${version:-?} headers in $trt_include"
for source in "$source_dir"/*.cpp; do
    # shellcheck disable=SC2086  # python_includes is a list of flags
    g++ -std=c++17 -Wall -Wextra -fsyntax-only -I "$source_dir" \
        -isystem "$trt_include" -isystem "$cuda_include" $python_includes "$source"
    echo "ok: $(basename "$source")"
done
