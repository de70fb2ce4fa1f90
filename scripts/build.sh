#!/usr/bin/env bash
# Build the demo's container image from the repository root (what goes in it: see Dockerfile).
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/build.sh [--file DOCKERFILE] [--tag TAG] [--trt-container IMAGE] [--dry-run]
  --file DOCKERFILE     Dockerfile to build (default: Dockerfile)
  --tag TAG             name of the image (default: demobert)
  --trt-container IMAGE NVIDIA TensorRT base image (default: the Dockerfile's TRT_CONTAINER)
  --dry-run             print the docker command without running it
USAGE
}

fail() {
    echo "build.sh: error: $*" >&2
    exit 1
}

dockerfile=Dockerfile
tag=demobert
base_image=
dry_run=false
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --file|--tag|--trt-container)
            [ $# -ge 2 ] || fail "$1 needs a value"
            case "$1" in
                --file) dockerfile=$2 ;;
                --tag) tag=$2 ;;
                --trt-container) base_image=$2 ;;
            esac
            shift ;;
        --dry-run) dry_run=true ;;
        *) fail "unknown option $1 (see --help)" ;;
    esac
    shift
done

cd "$(dirname "$0")/.."
[ -f "$dockerfile" ] || fail "no Dockerfile at $dockerfile"
command=(docker build -f "$dockerfile" -t "$tag")
# The image's user takes the caller's ids so that files written to mounted folders stay the
# caller's; root keeps the image's default ids (uid 0 cannot be given to a second user).
if [ "$(id -u)" -ne 0 ]; then
    command+=(--build-arg "UID=$(id -u)" --build-arg "GID=$(id -g)")
fi
if [ -n "$base_image" ]; then
    command+=(--build-arg "TRT_CONTAINER=$base_image")
fi
command+=(.)

echo "Building container:"
echo "> ${command[*]}"
if [ "$dry_run" = false ]; then
    command -v docker > /dev/null || fail "docker is not installed"
    "${command[@]}"
fi
