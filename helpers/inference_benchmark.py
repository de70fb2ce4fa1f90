"""The benchmark matrix behind scripts/inference_benchmark.sh.

For every (model, precision, sequence length, batch size) of the original matrix: build the
engine if it is missing (downloading the checkpoint first if needed), run perf.py with --json,
then print the README-style Markdown tables of all results.  ``--quick`` runs a tiny seeded
random model on CPU instead, as a smoke test of the whole chain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from helpers.benchmark_report import load_measurements, render_report, result_path
from helpers.cli import exit_on_interrupt

REPO_ROOT = Path(__file__).resolve().parent.parent
GPUS = ("Volta", "Xavier", "Turing", "Ampere", "Hopper", "Blackwell")
# Hopper and Blackwell did not exist for the original script; they take Ampere's settings.
AMPERE_CLASS = ("Ampere", "Hopper", "Blackwell")
BATCH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 64, 128)
QUICK_BATCH_SIZES = (1, 2)
QAT_ONNX = "models/fine-tuned/bert_pyt_onnx_large_qa_squad11_amp_fake_quant_v1/bert_large_v1_1_fake_quant.onnx"
SCRIPT = "scripts/inference_benchmark.sh"
USAGE = f"""Usage: {SCRIPT} [--gpu <arch>] [--quick] [--workdir DIR] | --compare ARGS...
    --gpu <arch>    one of {', '.join(GPUS)} (default: Volta); picks INT8 builder options and iteration counts
    --quick         tiny random model, batch sizes 1 and 2, a few iterations, on CPU (a smoke test)
    --workdir DIR   where engines/, models/ and results/ live (default: the repository; --quick: a temp folder)"""


class BenchmarkError(RuntimeError):
    pass


@dataclass(frozen=True)
class Configuration:
    model: str
    precision: str
    sequence_length: int


FULL_MATRIX = tuple(
    Configuration(model, precision, seq)
    for model, precisions in (("base", ("int8", "fp16", "fp32")), ("large", ("int8-qat", "int8", "fp16", "fp32")))
    for precision in precisions
    for seq in (128, 384)
)
QUICK_MATRIX = (Configuration("tiny", "fp32", 32),)


@dataclass
class Options:
    gpu: str = "Volta"
    quick: bool = False
    workdir: Path | None = None


def parse_options(argv: list[str]) -> Options:
    options = Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if arg == "--gpu" and args:
            options.gpu = args.pop(0)
            if options.gpu not in GPUS:
                raise BenchmarkError(f"unknown --gpu {options.gpu!r}; choose one of {', '.join(GPUS)}")
        elif arg == "--quick":
            options.quick = True
        elif arg == "--workdir" and args:
            options.workdir = Path(args.pop(0)).resolve()
        else:
            print(f"Unknown parameter passed: {arg}", file=sys.stderr)
            print(f"For help type: {SCRIPT} --help", file=sys.stderr)
            raise SystemExit(1)
    return options


def run_command(command: list[str], env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> None:
    completed = subprocess.run(command, cwd=cwd, env=env)
    if completed.returncode != 0:
        raise BenchmarkError(f"command failed with exit status {completed.returncode}: {' '.join(command)}")


def builder_arguments(config: Configuration, gpu: str, checkpoint_dir: Path, workdir: Path) -> list[str] | None:
    """The builder.py options (weights source + precision) of a configuration; None to skip it."""
    precision = config.precision
    if precision == "int8-qat":
        if config.model != "large":
            print("Skipping: BERT-base not supported for int8 (QAT)")
            return None
        onnx = workdir / QAT_ONNX
        if not onnx.exists():
            run_command(["bash", str(REPO_ROOT / "scripts/download_model.sh"), "pyt", "v1_1", "large"], cwd=workdir)
        source = ["-x", str(onnx)]
        precision = "int8"
    else:
        source = ["-m", str(checkpoint_dir / "model.ckpt")]
    args = source + ["-c", str(checkpoint_dir), "-v", str(checkpoint_dir / "vocab.txt")]
    if precision == "fp16":
        args.append("--fp16")
    elif precision == "int8":
        args += ["--int8", "--fp16", "--strict", "--calib-num", "1"]
        if gpu in AMPERE_CLASS or gpu == "Turing":
            args += ["-iln", "-imh"]
        elif gpu == "Xavier":
            args.append("-iln")
    return args


def engine_path(workdir: Path, config: Configuration, batch_size: int) -> Path:
    return workdir / f"engines/bert_{config.model}_{config.precision}_bs{batch_size}_seqlen{config.sequence_length}_benchmark.engine"


def builder_source(config: Configuration, options: Options, workdir: Path) -> list[str] | None:
    """builder.py options other than -o/-b/-s, fetching or writing the weights first; None to skip."""
    if options.quick:
        from helpers.demo_model import write_tiny_qa_model

        model_dir = workdir / "models" / "tiny-random-qa"
        if not model_dir.exists():
            write_tiny_qa_model(model_dir, seed=0)
        return ["--hf", str(model_dir), "--backend", "portable"]
    checkpoint_dir = workdir / f"models/fine-tuned/bert_tf_ckpt_{config.model}_qa_squad2_amp_{config.sequence_length}_v19.03.1"
    if not checkpoint_dir.exists():
        run_command(["bash", str(REPO_ROOT / "scripts/download_model.sh"), config.model, str(config.sequence_length)], cwd=workdir)
    args = builder_arguments(config, options.gpu, checkpoint_dir, workdir)
    return None if args is None else [*args, "-tcf", str(workdir / "build.tcf")]


def benchmark_configuration(config: Configuration, options: Options, workdir: Path, env: dict[str, str]) -> None:
    print(f"==== Benchmarking BERT {config.model} {config.precision} SEQLEN {config.sequence_length} on {options.gpu} ====")
    batch_sizes = QUICK_BATCH_SIZES if options.quick else BATCH_SIZES
    seq = str(config.sequence_length)
    if not all(engine_path(workdir, config, b).exists() for b in batch_sizes):
        source = builder_source(config, options, workdir)
        if source is None:
            print()
            return
        for batch_size in batch_sizes:
            engine = engine_path(workdir, config, batch_size)
            if not engine.exists():
                command = [sys.executable, "builder.py", *source, "-o", str(engine), "-b", str(batch_size), "-s", seq]
                print(f"Building engine: {' '.join(command)}")
                run_command(command, env)
    iterations = 3 if options.quick else (2000 if options.gpu in AMPERE_CLASS else 1000)
    warm_up = 1 if options.quick else 100
    for batch_size in batch_sizes:
        result = result_path(workdir / "results", config.model, config.precision, config.sequence_length, batch_size)
        result.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "perf.py", "-b", str(batch_size), "-s", seq, "-e", str(engine_path(workdir, config, batch_size)),
                   "-w", str(warm_up), "-i", str(iterations), "--json", str(result)]
        if not options.quick:
            command.append("--enable-graph")
        print(f"Running benchmark: {' '.join(command)}")
        run_command(command, env)
    print()


def run_matrix(options: Options) -> str:
    """Run the whole matrix; return the Markdown report."""
    workdir = options.workdir or (Path(tempfile.mkdtemp(prefix="demobert-quick-")) if options.quick else REPO_ROOT)
    (workdir / "engines").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if options.quick:
        env.update(DEMOBERT_DEVICE="cpu", DEMOBERT_BACKEND="portable")
    elif shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "-q"], check=False)
    for config in QUICK_MATRIX if options.quick else FULL_MATRIX:
        benchmark_configuration(config, options, workdir, env)
    measurements = load_measurements(workdir / "results")
    if not measurements:
        raise BenchmarkError(f"no results were produced under {workdir / 'results'}")
    print(f"Results: {workdir / 'results'}\n")
    return render_report(measurements)


@exit_on_interrupt
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if "--compare" in args:
            compare = REPO_ROOT / "bench" / "compare.py"
            if not compare.exists():
                raise BenchmarkError("--compare needs bench/compare.py, which this checkout does not have")
            rest = args[args.index("--compare") + 1 :]
            return subprocess.run([sys.executable, "-m", "bench.compare", *rest], cwd=REPO_ROOT).returncode
        print(run_matrix(parse_options(args)))
    except BenchmarkError as err:
        print(f"inference_benchmark.sh: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
