#!/usr/bin/env bash
# The original demo's benchmark matrix: builds missing engines, runs perf.py on each, then prints
# the README-style latency tables.  The logic lives in helpers/inference_benchmark.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m helpers.inference_benchmark "$@"
