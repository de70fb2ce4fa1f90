#!/usr/bin/env bash
# Serve the quick-start model with Triton Inference Server: sets up .venv and .venv-serving, builds
# the MiniLM-L6 engine (batches up to 8, sequence length 128) and its model repository, and runs
# tritonserver in the foreground on 127.0.0.1 (Ctrl-C stops it).  Ask it from another terminal:
#   .venv/bin/python -m serving.client --url 127.0.0.1:8000 -p "..." -q "..."
# Options: --device cpu|cuda (default: cuda when PyTorch sees a GPU; there with --cuda-graphs),
# --http-port/--grpc-port/--metrics-port.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=""
SERVE_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) SERVE_ARGS+=("$1"); shift ;;
  esac
done
bash scripts/setup_env.sh
bash scripts/setup_serving_env.sh
PY=.venv/bin/python
MODEL=models/minilm-l6-random-qa-head
[ -n "$DEVICE" ] || DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
ENGINE=engines/minilm_l6_128_b8_$DEVICE.engine
REPO=engines/triton_repository_$DEVICE
[ -d "$MODEL" ] || "$PY" -m helpers.demo_model minilm "$MODEL"
mkdir -p engines
[ -f "$ENGINE" ] || "$PY" builder.py --hf "$MODEL" -o "$ENGINE" -b 1 -b 8 -s 128 --device "$DEVICE"
GRAPHS=()
[ "$DEVICE" = cpu ] || GRAPHS=(--cuda-graphs)
[ -d "$REPO" ] || "$PY" -m serving.repository -e "$ENGINE" -v "$MODEL/vocab.txt" -o "$REPO" --device "$DEVICE" "${GRAPHS[@]}"
exec .venv-serving/bin/python -m serving.serve --model-repository "$REPO" "${SERVE_ARGS[@]}"
