"""scripts/: download scripts (no network: stand-in ngc/wget), the benchmark script and its tables, doctor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import builder
import inference
from engines import REPO_ROOT
from helpers.backend import import_tensorrt
from helpers.benchmark_report import load_measurements, render_report, result_path
from helpers.demo_model import write_minilm_qa_model

SCRIPTS = REPO_ROOT / "scripts"


def run_script(name, *args, cwd, path_dirs=(), env_extra=None):
    """Run a script with PATH limited to the given folders plus the basic system tools."""
    bin_dir = Path(cwd) / ".bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("mktemp", "mv", "rm", "rmdir", "mkdir", "cat", "dirname"):
        target = shutil.which(tool)
        if target and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(target)
    env = {"PATH": os.pathsep.join([*map(str, path_dirs), str(bin_dir)]), "HOME": str(cwd), **(env_extra or {})}
    return subprocess.run(["/bin/bash", str(SCRIPTS / name), *args], cwd=cwd, env=env, capture_output=True, text=True)


def fake_tool(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / name
    tool.write_text("#!/bin/bash\n" + body)
    tool.chmod(0o755)
    return folder


# ---- download_model.sh ---------------------------------------------------------------------


def test_download_model_help_and_bad_arguments(tmp_path):
    result = run_script("download_model.sh", "-h", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == "Usage: sh download_model.sh [tf|pyt] [base|large|megatron-large] [128|384] [v2|v1_1] [sparse] [int8-qat]\n"
    result = run_script("download_model.sh", "huge", cwd=tmp_path)
    assert result.returncode == 1 and "Invalid argument huge...exiting" in result.stderr
    result = run_script("download_model.sh", "pyt", "base", cwd=tmp_path)
    assert result.returncode == 1
    assert "ERROR: Only BERT-large checkpoint fine-tuned for SQuAD v1.1 available in the QAT (PyTorch) workflow." in result.stderr
    assert not (tmp_path / "models").exists()


def test_download_model_without_ngc_makes_no_folder(tmp_path):
    result = run_script("download_model.sh", "base", "384", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == "Downloading BERT-tf base checkpoints for sequence length 384 and fine-tuned for SQuAD 2.\n"
    assert "NGC CLI" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "models").exists()


def test_download_model_with_failing_ngc_cleans_up(tmp_path):
    tools = fake_tool(tmp_path / "tools", "ngc", 'mkdir -p "$6/partial_v1"; echo "network unreachable" >&2; exit 1\n')
    result = run_script("download_model.sh", "pyt", "v1_1", cwd=tmp_path, path_dirs=[tools])
    assert result.returncode == 1 and "downloading nvidia/bert_pyt_onnx_large_qa_squad11_amp_fake_quant:1" in result.stderr
    assert not (tmp_path / "models").exists()


def test_download_model_catalogue_and_skip(tmp_path):
    # Stand-in NGC CLI: `ngc registry model download-version nvidia/NAME:VERSION --dest DIR`.
    tools = fake_tool(tmp_path / "tools", "ngc", 'spec=${4#nvidia/}; mkdir -p "$6/${spec%%:*}_v${spec##*:}"; echo "$4" > "$6/${spec%%:*}_v${spec##*:}/source"\n')
    cases = [
        ((), "bert_tf_ckpt_large_qa_squad2_amp_128_v19.03.1", "nvidia/bert_tf_ckpt_large_qa_squad2_amp_128:19.03.1"),
        (("base", "384", "v1_1"), "bert_tf_ckpt_base_qa_squad11_amp_384_v19.03.1", "nvidia/bert_tf_ckpt_base_qa_squad11_amp_384:19.03.1"),
        (("pyt", "v1_1"), "bert_pyt_onnx_large_qa_squad11_amp_fake_quant_v1", "nvidia/bert_pyt_onnx_large_qa_squad11_amp_fake_quant:1"),
        (("pyt", "megatron-large", "int8-qat", "sparse"), "bert_pyt_statedict_megatron_sparse_int8qat_v21.03.0",
         "nvidia/bert_pyt_statedict_megatron_sparse_int8qat:21.03.0"),
    ]
    for args, folder, source in cases:
        result = run_script("download_model.sh", *args, cwd=tmp_path, path_dirs=[tools])
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "models/fine-tuned" / folder / "source").read_text().strip() == source
    assert sorted(p.name for p in (tmp_path / "models/fine-tuned").iterdir()) == sorted(c[1] for c in cases)
    again = run_script("download_model.sh", cwd=tmp_path, path_dirs=[tools])
    assert again.stdout.splitlines()[-1] == (
        f"Checkpoint directory {tmp_path}/models/fine-tuned/bert_tf_ckpt_large_qa_squad2_amp_128_v19.03.1 already exists. Skip download."
    )


# ---- download_squad.sh ---------------------------------------------------------------------


def test_download_squad_help_and_bad_arguments(tmp_path):
    assert run_script("download_squad.sh", "-h", cwd=tmp_path).stdout == "Usage: sh download_squad.sh [v2_0|v1_1]\n"
    result = run_script("download_squad.sh", "v3", cwd=tmp_path)
    assert result.returncode == 1 and "Invalid argument v3...exiting" in result.stderr


def test_download_squad_failure_leaves_nothing(tmp_path):
    tools = fake_tool(tmp_path / "tools", "wget", 'case "$3" in *dev*) exit 4;; esac; echo "{}" > "$3"\n')
    result = run_script("download_squad.sh", "v2_0", cwd=tmp_path, path_dirs=[tools], env_extra={"TMPDIR": str(tmp_path)})
    assert result.returncode == 1
    assert result.stdout == "Downloading SQuAD-v2.0 training and dev datasets\n"
    assert "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bin", "tools"]


def test_download_squad_success(tmp_path):
    tools = fake_tool(tmp_path / "tools", "wget", 'echo "$4" > "$3"\n')
    result = run_script("download_squad.sh", cwd=tmp_path, path_dirs=[tools])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "squad/train-v1.1.json").read_text().strip() == "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json"
    assert (tmp_path / "squad/dev-v1.1.json").read_text().strip() == "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json"


# ---- inference_benchmark.sh ----------------------------------------------------------------


def benchmark(*args, cwd=REPO_ROOT):
    return subprocess.run(["bash", str(SCRIPTS / "inference_benchmark.sh"), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})


def test_benchmark_options():
    result = benchmark("--gpu", "Pascal")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "inference_benchmark.sh: error: unknown --gpu 'Pascal'; choose one of Volta, Xavier, Turing, Ampere, Hopper, Blackwell\n"
    result = benchmark("--fast")
    assert result.returncode == 1
    assert result.stderr == "Unknown parameter passed: --fast\nFor help type: scripts/inference_benchmark.sh --help\n"
    result = benchmark("--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: scripts/inference_benchmark.sh [--gpu <arch>]")


def test_benchmark_compare_passes_through_to_the_bench_script():
    result = benchmark("--compare", "--help")
    if (REPO_ROOT / "bench" / "compare.py").exists():
        assert result.returncode == 0 and result.stdout.startswith("usage: ")
    else:
        assert result.returncode == 1
        assert result.stderr == "inference_benchmark.sh: error: --compare needs bench/compare.py, which this checkout does not have\n"


def write_result(results: Path, model: str, precision: str, seq: int, batch: int, avg: float, p95: float, p99: float):
    path = result_path(results, model, precision, seq, batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"batch_size": batch, "iterations": 10, "total_ms": avg * 10, "avg_ms": avg, "p50_ms": avg, "p95_ms": p95, "p99_ms": p99,
              "sequences_per_second": batch * 1000 / avg}
    path.write_text(json.dumps({"format_version": 1, "sequence_length": seq, "results": [record]}))


def test_report_tables_in_the_readme_layout(tmp_path):
    write_result(tmp_path, "base", "fp16", 128, 1, 0.481, 0.484, 0.489)
    write_result(tmp_path, "base", "int8", 128, 1, 0.335, 0.341, 0.342)
    write_result(tmp_path, "base", "int8", 128, 2, 0.405, 0.409, 0.413)
    write_result(tmp_path, "base", "fp16", 128, 2, 0.554, 0.556, 0.561)
    write_result(tmp_path, "base", "int8", 384, 1, 0.731, 0.733, 0.734)
    write_result(tmp_path, "large", "fp16", 128, 1, 1.3, 1.301, 1.302)
    assert render_report(load_measurements(tmp_path)) == "\n".join([
        "##### BERT base",
        "",
        "| Sequence Length | Batch Size | INT8 Latency (ms) |                 |         | FP16 Latency (ms) |                 |         |",
        "| --------------- | ---------- | ----------------- | --------------- | ------- | ----------------- | --------------- | ------- |",
        "|                 |            | 95th Percentile   | 99th Percentile | Average | 95th Percentile   | 99th Percentile | Average |",
        "| 128             | 1          | 0.34              | 0.34            | 0.34    | 0.48              | 0.49            | 0.48    |",
        "| 128             | 2          | 0.41              | 0.41            | 0.41    | 0.56              | 0.56            | 0.55    |",
        "| 384             | 1          | 0.73              | 0.73            | 0.73    | -                 | -               | -       |",
        "",
        "##### BERT large",
        "",
        "| Sequence Length | Batch Size | FP16 Latency (ms) |                 |         |",
        "| --------------- | ---------- | ----------------- | --------------- | ------- |",
        "|                 |            | 95th Percentile   | 99th Percentile | Average |",
        "| 128             | 1          | 1.30              | 1.30            | 1.30    |",
    ])


def test_report_refuses_another_format_version(tmp_path):
    write_result(tmp_path, "base", "fp16", 128, 1, 0.5, 0.5, 0.5)
    path = result_path(tmp_path, "base", "fp16", 128, 1)
    path.write_text(path.read_text().replace('"format_version": 1', '"format_version": 2'))
    with pytest.raises(ValueError, match="format_version 2, expected 1"):
        load_measurements(tmp_path)


def test_the_report_tool_starts_without_the_engine_libraries(tmp_path):
    """Rendering results reads JSON files only: no torch, TensorRT or transformers to load."""
    write_result(tmp_path, "base", "fp16", 128, 1, 0.5, 0.5, 0.5)
    code = ("import runpy, sys; sys.argv = ['benchmark_report', sys.argv[1]]\n"
            "try:\n    runpy.run_module('helpers.benchmark_report', run_name='__main__')\n"
            "finally:\n    print(sorted({'torch', 'tensorrt', 'transformers'} & set(sys.modules)), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert "| Sequence Length | Batch Size |" in result.stdout, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_benchmark_quick_mode_end_to_end(tmp_path):
    result = benchmark("--quick", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "==== Benchmarking BERT tiny fp32 SEQLEN 32 on Volta ====" in out
    assert out.count("Running 3 iterations with Batch Size:") == 2
    for batch in (1, 2):
        data = json.loads(result_path(tmp_path / "results", "tiny", "fp32", 32, batch).read_text())
        assert data["results"][0]["batch_size"] == batch and data["device"] == "cpu"
        assert (tmp_path / f"engines/bert_tiny_fp32_bs{batch}_seqlen32_benchmark.engine").exists()
    table = out[out.index("##### BERT tiny"):].splitlines()
    assert table[2].startswith("| Sequence Length | Batch Size | FP32 Latency (ms) |")
    assert [row.split("|")[1:3] for row in table[5:7]] == [[" 32              ", " 1          "], [" 32              ", " 2          "]]


# ---- doctor -------------------------------------------------------------------------------


def test_doctor_reports_versions_backend_and_features():
    result = subprocess.run([sys.executable, "-m", "helpers.doctor"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"PyTorch:         {torch.__version__}" in out
    assert "  portable engines on CPU (build + inference + perf): ready" in out
    if import_tensorrt() is None:
        assert "TensorRT:        not installed" in out and "Backend 'auto':  portable" in out
    if not torch.cuda.is_available():
        assert "GPU:             none visible to PyTorch" in out
        assert "  CUDA graphs (--enable-graph): missing a CUDA GPU visible to PyTorch" in out


@pytest.mark.parametrize("setting", ["bogus", "cuda:99"])
def test_doctor_does_not_call_portable_engines_ready_under_an_unusable_device_setting(setting):
    """Runners without --device would fail on this DEMOBERT_DEVICE; the doctor used to say "ready"."""
    env = {**os.environ, "DEMOBERT_DEVICE": setting}
    result = subprocess.run([sys.executable, "-m", "helpers.doctor"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("  portable engines on CPU"))
    assert line.startswith("  portable engines on CPU (build + inference + perf): missing a usable device setting (DEMOBERT_DEVICE: ")
    assert f"{setting!r}" in line and "ready" not in line


def test_minilm_demo_model_builds_and_answers(tmp_path, capsys):
    """The offline quick start's steps (scripts/quickstart.sh without the venv set-up)."""
    model = write_minilm_qa_model(tmp_path / "minilm")
    engine = tmp_path / "minilm.engine"
    assert builder.main(["--hf", str(model), "-o", str(engine), "-b", "1", "-s", "128", "--backend", "portable", "--device", "cpu"]) == 0
    capsys.readouterr()
    status = inference.main(["-e", str(engine), "-v", str(model / "vocab.txt"), "-s", "128", "--device", "cpu",
                             "-p", "TensorRT is a high performance deep learning inference platform.", "-q", "What is TensorRT?"])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[4] == "-" * 24 and lines[7].startswith("Answer: '") and lines[8].startswith("With probability: ")
