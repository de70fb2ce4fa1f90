# The demo in NVIDIA's TensorRT container: TensorRT 10.11 with CUDA 12.9 on Ubuntu 24.04 (the versions
# the original demo was last tested with), the demo's Python dependencies, and infer_c + perf built
# into /workspace/demobert/build.  Build it with scripts/build.sh and start it with scripts/launch.sh.
ARG TRT_CONTAINER=nvcr.io/nvidia/tensorrt:25.06-py3
FROM ${TRT_CONTAINER}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The system Python is this image's only Python, so pip may install into it despite PEP 668.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# The compiler and Python.h for infer_c (the base image has CUDA and TensorRT with their headers).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make python3-dev \
    && rm -rf /var/lib/apt/lists/*

# TensorFlow reads the NGC TF checkpoints (builder.py -m); pybind11 and CMake build infer_c;
# JupyterLab serves the notebooks (scripts/launch.sh --jupyter PORT).
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m pip install -r /tmp/requirements.txt \
        "tensorflow-cpu>=2.16,<3" "pybind11>=2.11,<4" "cmake>=3.18,<5" "jupyterlab>=4,<5" \
    && rm /tmp/requirements.txt

# Files written to the mounted models/engines/squad folders belong to the host user whose ids are
# passed as build arguments.  Ubuntu 24.04 images come with a user "ubuntu" holding uid/gid 1000.
ARG UID=1000
ARG GID=1000
RUN if id -u ubuntu > /dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --force --gid "${GID}" demobert \
    && useradd --create-home --uid "${UID}" --gid "${GID}" --shell /bin/bash demobert \
    && mkdir -p /workspace/demobert \
    && chown demobert:demobert /workspace/demobert

WORKDIR /workspace/demobert
USER ${UID}:${GID}
COPY --chown=demobert:demobert . .
RUN infer_c/build.sh
CMD ["/bin/bash"]
