#!/usr/bin/env bash
# Start the demo's container (built by scripts/build.sh) with the GPUs and the host's models,
# engines and SQuAD folders mounted into /workspace/demobert.  Arguments after -- are run instead of
# an interactive shell.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/launch.sh [--tag TAG] [--gpus GPUS] [--jupyter PORT] [--models DIR] [--engines DIR]
                         [--squad DIR] [--dry-run] [-- COMMAND ...]
  --tag TAG       image to run (default: demobert)
  --gpus GPUS     GPUs passed to docker run --gpus (default: all; none runs without GPUs)
  --jupyter PORT  publish PORT and start JupyterLab on it instead of a shell
  --models DIR    host folder mounted as models/ (default: <repo>/models)
  --engines DIR   host folder mounted as engines/ (default: <repo>/engines)
  --squad DIR     host folder mounted as squad/ (default: <repo>/squad, which holds the evaluators)
  --dry-run       print the docker command without running it
USAGE
}

fail() {
    echo "launch.sh: error: $*" >&2
    exit 1
}

repo=$(cd "$(dirname "$0")/.." && pwd)
workdir=/workspace/demobert
tag=demobert
gpus=all
jupyter_port=
models_dir=$repo/models
engines_dir=$repo/engines
squad_dir=$repo/squad
dry_run=false
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --tag|--gpus|--jupyter|--models|--engines|--squad)
            [ $# -ge 2 ] || fail "$1 needs a value"
            case "$1" in
                --tag) tag=$2 ;;
                --gpus) gpus=$2 ;;
                --jupyter) jupyter_port=$2 ;;
                --models) models_dir=$2 ;;
                --engines) engines_dir=$2 ;;
                --squad) squad_dir=$2 ;;
            esac
            shift ;;
        --dry-run) dry_run=true ;;
        --) shift; break ;;
        *) fail "unknown option $1 (see --help)" ;;
    esac
    shift
done
if [ -n "$jupyter_port" ]; then
    [[ "$jupyter_port" =~ ^[0-9]+$ ]] || fail "--jupyter needs a port number, got '$jupyter_port'"
    [ $# -eq 0 ] || fail "--jupyter starts JupyterLab; it cannot be combined with a command"
fi

command=(docker run --rm -i)
[ -t 0 ] && command+=(-t)
[ "$gpus" = none ] || command+=(--gpus "$gpus")
# PyTorch's data loading and the TensorRT builder want more than Docker's default 64 MiB of /dev/shm.
command+=(--shm-size=1g --ulimit memlock=-1 --ulimit stack=67108864)
for mount in "models:$models_dir" "engines:$engines_dir" "squad:$squad_dir"; do
    name=${mount%%:*}
    host_dir=${mount#*:}
    # Created here so that Docker does not create it as root.
    [ "$dry_run" = true ] || mkdir -p "$host_dir"
    host_dir=$(realpath -m "$host_dir")
    command+=(-v "$host_dir:$workdir/$name")
done
if [ -n "$jupyter_port" ]; then
    command+=(-p "$jupyter_port:$jupyter_port" "$tag" jupyter-lab "--port=$jupyter_port" --no-browser --ip 0.0.0.0)
else
    command+=("$tag" "$@")
fi

echo "> ${command[*]}"
if [ "$dry_run" = false ]; then
    command -v docker > /dev/null || fail "docker is not installed"
    exec "${command[@]}"
fi
