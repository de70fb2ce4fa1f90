#!/usr/bin/env bash
# The original demo's benchmark matrix: builds missing engines, runs perf.py on each, then prints
# the README-style latency tables.  The logic lives in helpers/inference_benchmark.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ -z "${VIRTUAL_ENV:-}" ]; then PYTHON=.venv/bin/python; fi
exec "$PYTHON" -m helpers.inference_benchmark "$@"
