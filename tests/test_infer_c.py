"""infer_c (C++ runner, pybind11 module, perf binary) and its CMake build, checked without a GPU.

* Always: configuring without TensorRT stops with one message that says what to install.
* With ``TRT_INCLUDE_DIR`` set (TensorRT's ``include/``, e.g. from github NVIDIA/TensorRT) and CUDA
  headers (``CUDA_INCLUDE_DIR`` or /usr/local/cuda/include): every translation unit compiles against
  them, and a CMake build linked to stand-in TensorRT libraries yields a ``perf`` whose options parse
  as documented and an importable ``infer_c``.  Running an engine needs a GPU and real TensorRT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake")
TRT_INCLUDE_DIR = os.environ.get("TRT_INCLUDE_DIR", "")
CUDA_INCLUDE_DIR = os.environ.get("CUDA_INCLUDE_DIR", "/usr/local/cuda/include")
HAVE_TRT_HEADERS = (Path(TRT_INCLUDE_DIR) / "NvInfer.h").is_file() if TRT_INCLUDE_DIR else False
HAVE_CUDA_HEADERS = (Path(CUDA_INCLUDE_DIR) / "cuda_runtime_api.h").is_file()
CUDA_LIB_DIR = Path(CUDA_INCLUDE_DIR).parent / "lib64"

needs_cmake = pytest.mark.skipif(CMAKE is None, reason="cmake is not installed")
needs_headers = pytest.mark.skipif(
    not (HAVE_TRT_HEADERS and HAVE_CUDA_HEADERS),
    reason="set TRT_INCLUDE_DIR to TensorRT's include/ (and CUDA_INCLUDE_DIR unless /usr/local/cuda/include "
    "exists) to compile infer_c against them",
)

# Stand-ins for the three TensorRT entry points infer_c links to, so the build links on a machine
# without TensorRT.  Creating a runtime "fails" (nullptr), which is all these tests reach.
TRT_STUB_SOURCE = """
#include <cstdint>
extern "C" void* createInferRuntime_INTERNAL(void*, int32_t) { return nullptr; }
extern "C" int32_t getInferLibVersion() noexcept { return 0; }
extern "C" bool initLibNvInferPlugins(void*, char const*) { return false; }
"""


def configure(build_dir: Path, *definitions: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRT_OSSPATH", "TRT_LIBPATH")}
    return subprocess.run(
        [CMAKE or "cmake", "-S", str(REPO), "-B", str(build_dir), f"-DPython_EXECUTABLE={sys.executable}",
         *definitions],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip


def assert_one_configure_error(result: subprocess.CompletedProcess[str], build_dir: Path) -> str:
    """The configure failed with exactly one error and generated no build system; returns its text."""
    assert result.returncode != 0
    assert result.stderr.count("CMake Error") == 1, result.stderr
    assert not (build_dir / "Makefile").exists() and not (build_dir / "build.ninja").exists()
    message = " ".join(result.stderr.split())
    assert "-DTRT_INCLUDE_DIR=<dir with NvInfer.h> -DTRT_LIB_DIR=<dir with libnvinfer.so>" in message
    assert "TRT_OSSPATH" in message and "TRT_LIBPATH" in message
    return message


@needs_cmake
def test_configure_without_tensorrt_stops_with_one_message(tmp_path):
    result = configure(tmp_path / "build")
    if result.returncode == 0:
        pytest.skip("TensorRT is installed on this machine")
    message = assert_one_configure_error(result, tmp_path / "build")
    assert "missing: - TensorRT headers (NvInfer.h) - TensorRT library libnvinfer" in message


@needs_cmake
def test_configure_with_a_wrong_tensorrt_folder_names_it(tmp_path):
    empty = tmp_path / "no_tensorrt"
    empty.mkdir()
    result = configure(tmp_path / "build", f"-DTRT_INCLUDE_DIR={empty}")
    message = assert_one_configure_error(result, tmp_path / "build")
    assert f"TensorRT headers (NvInfer.h is not in TRT_INCLUDE_DIR={empty})" in message


@needs_headers
def test_every_translation_unit_compiles_against_tensorrt_headers():
    result = subprocess.run(
        ["bash", str(REPO / "infer_c" / "check_headers.sh"), TRT_INCLUDE_DIR, CUDA_INCLUDE_DIR],
        capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    checked = sorted(line.removeprefix("ok: ") for line in result.stdout.splitlines() if line.startswith("ok: "))
    assert checked == sorted(p.name for p in (REPO / "infer_c").glob("*.cpp"))


@pytest.fixture(scope="module")
def stub_build(tmp_path_factory):
    """CMake build of infer_c and perf against the real headers and stand-in TensorRT libraries."""
    if CMAKE is None or not (HAVE_TRT_HEADERS and HAVE_CUDA_HEADERS):
        pytest.skip("needs cmake, TRT_INCLUDE_DIR and CUDA headers")
    root = tmp_path_factory.mktemp("infer_c_build")
    stub_dir = root / "trt_lib"
    stub_dir.mkdir()
    (root / "trt_stub.cpp").write_text(TRT_STUB_SOURCE)
    for name in ("libnvinfer.so", "libnvinfer_plugin.so"):
        subprocess.run(["g++", "-shared", "-fPIC", "-o", str(stub_dir / name), str(root / "trt_stub.cpp")], check=True)
    build = root / "build"
    result = configure(build, f"-DTRT_INCLUDE_DIR={TRT_INCLUDE_DIR}", f"-DTRT_LIB_DIR={stub_dir}")
    assert result.returncode == 0, result.stderr
    result = subprocess.run([CMAKE, "--build", str(build), "-j2"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return build, stub_dir


def run_perf(stub_build, *args: str) -> subprocess.CompletedProcess[str]:
    build, stub_dir = stub_build
    env = {**os.environ, "LD_LIBRARY_PATH": f"{stub_dir}:{CUDA_LIB_DIR}"}
    return subprocess.run([str(build / "perf"), *args], capture_output=True, text=True, env=env, check=False)


def test_perf_help_prints_usage(stub_build):
    result = run_perf(stub_build, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: ./perf [-h] [-e ENGINE] [-b BATCH_SIZE] [-s SEQUENCE_LENGTH]\n")
    assert "[-i ITERATIONS] [-w WARM_UP_RUNS] [-r RANDOM_SEED] [--enable_graph]" in result.stdout


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["-e", "x.engine", "--sequence_length"], "--sequence_length requires an argument"),
        (["-e", "x.engine", "-b", "0"], "--batch_size expects an integer"),
        (["-e", "x.engine", "-i", "ten"], "--iterations expects an integer"),
        (["-e", "x.engine", "--ramdon-seed", "1"], "unrecognized option '--ramdon-seed'"),
        (["-e", "x.engine", "stray"], "unexpected argument 'stray'"),
        (["-b", "1"], "--engine is required"),
    ],
)
def test_perf_rejects_bad_options_in_one_line(stub_build, args, reason):
    result = run_perf(stub_build, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Invalid arguments: ")
    assert reason in result.stderr


@pytest.mark.parametrize(
    "seed_option", [["--random_seed", "7"], ["--ramdon_seed", "7"], ["--random_seed=7"], ["-r", "7"]]
)
def test_perf_accepts_long_options_with_arguments(stub_build, seed_option, tmp_path):
    missing_engine = str(tmp_path / "missing.engine")
    result = run_perf(
        stub_build, "-e", missing_engine, "--sequence_length", "64", "--batch_size", "2", "-b", "1",
        "--iterations", "3", "--warm_up_runs", "0", "--enable_graph", *seed_option,
    )  # fmt: skip
    # Parsing succeeded, so the run got as far as CUDA (no GPU here) or the engine file.
    assert result.returncode == 1
    assert "Invalid arguments" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("[DemoBERT][E] ")
    assert "GPUassert: " in last_line or f"Error opening engine file: {missing_engine}" in last_line


def test_module_imports_and_checks_arguments_before_cuda(stub_build):
    build, stub_dir = stub_build
    script = (
        "import infer_c\n"
        "print(infer_c.__doc__)\n"
        "try:\n"
        "    infer_c.bert_inf('x.engine', 0, 128, False)\n"
        "except ValueError as error:\n"
        "    print('ValueError:', error)\n"
    )
    env = {**os.environ, "LD_LIBRARY_PATH": f"{stub_dir}:{CUDA_LIB_DIR}", "PYTHONPATH": str(build)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Pybind11 plugin for Bert inference",
        "ValueError: max batch size must be positive, got 0",
    ]
