#!/usr/bin/env bash
# Download the SQuAD training and dev sets into ./squad/ (run from the demo root).
# Both files are fetched into a temporary folder first; ./squad only gets complete files.
set -euo pipefail

VERSION=v1.1
while [ $# -gt 0 ]; do
    case "$1" in
        -h) echo "Usage: sh download_squad.sh [v2_0|v1_1]"; exit 0 ;;
        v2_0) VERSION=v2.0 ;;
        v1_1) VERSION=v1.1 ;;
        *) echo "Invalid argument $1...exiting" >&2; exit 1 ;;
    esac
    shift
done

echo "Downloading SQuAD-${VERSION} training and dev datasets"
if command -v wget >/dev/null 2>&1; then
    fetch() { wget -q -O "$2" "$1"; }
elif command -v curl >/dev/null 2>&1; then
    fetch() { curl -fsSL -o "$2" "$1"; }
else
    echo "ERROR: neither wget nor curl is installed." >&2
    exit 1
fi

STAGING=$(mktemp -d "${TMPDIR:-/tmp}/squad.XXXXXX")
trap 'rm -rf "$STAGING"' EXIT
for SPLIT in train dev; do
    URL=https://rajpurkar.github.io/SQuAD-explorer/dataset/${SPLIT}-${VERSION}.json
    if ! fetch "$URL" "$STAGING/${SPLIT}-${VERSION}.json"; then
        echo "ERROR: could not download ${URL} (no network?)." >&2
        exit 1
    fi
done
mkdir -p squad
mv "$STAGING/train-${VERSION}.json" "$STAGING/dev-${VERSION}.json" squad/
