#!/usr/bin/env bash
# Download a fine-tuned BERT checkpoint from NGC into ./models/fine-tuned/ (run from the demo root).
# Needs the NGC CLI and network access.  The download lands in a temporary folder first, so an
# interrupted or failed download leaves no half-made checkpoint folder behind.
set -euo pipefail

SQUAD=2
MODEL=large
SEQ_LEN=128
FW=tf
WTYPE=dense
PREC=fp16

while [ $# -gt 0 ]; do
    case "$1" in
        -h) echo "Usage: sh download_model.sh [tf|pyt] [base|large|megatron-large] [128|384] [v2|v1_1] [sparse] [int8-qat]"; exit 0 ;;
        base) MODEL=base ;;
        large) MODEL=large ;;
        megatron-large) MODEL=megatron ;;
        128|384) SEQ_LEN=$1 ;;
        v2) SQUAD=2 ;;
        v1_1) SQUAD=11 ;;
        tf|pyt) FW=$1 ;;
        int8-qat) PREC=int8qat ;;
        sparse) WTYPE=sparse ;;
        *) echo "Invalid argument $1...exiting" >&2; exit 1 ;;
    esac
    shift
done

echo "Downloading BERT-${FW} ${MODEL} checkpoints for sequence length ${SEQ_LEN} and fine-tuned for SQuAD ${SQUAD}."
if [ "$FW" = tf ]; then
    CKPT=bert_tf_ckpt_${MODEL}_qa_squad${SQUAD}_amp_${SEQ_LEN}; CKPT_VERSION=19.03.1
elif [ "$MODEL" = megatron ]; then
    CKPT=bert_pyt_statedict_megatron_${WTYPE}_${PREC}; CKPT_VERSION=21.03.0
elif [ "$MODEL" = large ] && [ "$SQUAD" = 11 ]; then
    CKPT=bert_pyt_onnx_large_qa_squad11_amp_fake_quant; CKPT_VERSION=1
else
    echo "ERROR: Only BERT-large checkpoint fine-tuned for SQuAD v1.1 available in the QAT (PyTorch) workflow." >&2
    exit 1
fi

TARGET=models/fine-tuned/${CKPT}_v${CKPT_VERSION}
if [ -d "$TARGET" ]; then
    echo "Checkpoint directory ${PWD}/${TARGET} already exists. Skip download."
    exit 0
fi
if ! command -v ngc >/dev/null 2>&1; then
    echo "ERROR: the NGC CLI (ngc) is not installed; get it from https://ngc.nvidia.com/setup/installers/cli, or use the offline quick start (bash scripts/quickstart.sh)." >&2
    exit 1
fi

mkdir -p models/fine-tuned
STAGING=$(mktemp -d models/fine-tuned/.download.XXXXXX)
trap 'rm -rf "$STAGING"' EXIT
if ! ngc registry model download-version "nvidia/${CKPT}:${CKPT_VERSION}" --dest "$STAGING"; then
    echo "ERROR: downloading nvidia/${CKPT}:${CKPT_VERSION} from NGC failed (network or NGC API key? see 'ngc config set')." >&2
    rm -rf "$STAGING"
    rmdir models/fine-tuned models 2>/dev/null || true
    exit 1
fi
if [ ! -d "$STAGING/${CKPT}_v${CKPT_VERSION}" ]; then
    echo "ERROR: NGC did not produce the folder ${CKPT}_v${CKPT_VERSION}." >&2
    exit 1
fi
mv "$STAGING/${CKPT}_v${CKPT_VERSION}" "$TARGET"
