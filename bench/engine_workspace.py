"""Run the project's own scripts in this process on one shared random model: the sizes of a run
(``Setup``: the GPU records, or ``--tiny``'s CPU check), builder.py / builder_varseqlen.py and
perf.py / perf_varseqlen.py through their ``main()``, and the ``Workspace`` of the model, the
hand-made SQuAD set and the engines each made once (``bench/gpu_records.py``, ``bench/int8_speed.py``).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import builder  # noqa: E402  (after the repository is importable)
import builder_varseqlen  # noqa: E402
import perf as perf_fixed  # noqa: E402
import perf_varseqlen  # noqa: E402
from bench.check_builder_gpu import SHAPES, random_qa_model  # noqa: E402
from bench.int8_accuracy import write_handmade_squad  # noqa: E402
from tests.squad_fixtures import minilm_vocab_file  # noqa: E402

# What scripts/inference_benchmark.sh builds on Ampere and later; builder.py refuses -imh without a GPU.
INT8_BUILD_FLAGS = ["-i", "--strict", "-iln", "-imh"]


class RecordsError(RuntimeError):
    pass


@dataclass(frozen=True)
class Setup:
    """Sizes of one run: the real records, or ``--tiny``'s CPU check of the script."""

    device: str
    model_shape: dict
    float_flags: list[str]  # ["-f"] on CUDA; FP16 engines do not run on the CPU
    seq_lengths: tuple[int, int]  # padded engines: 128 / 384
    batches: tuple[int, ...]  # padded engines: 1 / 32 / 128
    packed_batches: tuple[int, ...]  # packed engines: 32 / 128
    iterations: int
    warm_up: int
    check_builder_args: list[str]
    int8_flags: list[str]

    @property
    def float_name(self) -> str:
        return "fp16" if self.float_flags else "fp32"

    @property
    def accuracy_batch(self) -> int:
        """Features per engine call in the accuracy check."""
        return min(8, max(self.batches))

    @property
    def long_seq(self) -> int:
        return self.seq_lengths[-1]


def make_setup(tiny: bool, iterations: int | None = None) -> Setup:
    if tiny:
        return Setup("cpu", dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=2),
                     [], (64, 128), (1, 4), (2, 4), 3, 1, ["--tiny", "--device", "cpu", "--seq", "37"],
                     [f for f in INT8_BUILD_FLAGS if f not in ("-imh", "-iln")])
    if not torch.cuda.is_available():
        raise RecordsError("needs a CUDA GPU (use --tiny to check the script on a CPU)")
    return Setup("cuda", SHAPES["bert-large"], ["-f"], (128, 384), (1, 32, 128), (32, 128), iterations or 100, 10, [],
                 INT8_BUILD_FLAGS)


# ---------------------------------------------------------------------------------------------
# Running the project's own scripts in this process


def call_main(main: Callable[[list[str]], int | None], argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a script's main(); the output is also echoed to our log."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
    sys.stdout.write(out.getvalue())
    sys.stderr.write(err.getvalue())
    return int(status or 0), out.getvalue(), err.getvalue()


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def build(script: str, argv: list[str]) -> str:
    """Run builder.py / builder_varseqlen.py main(); return its log (raises on failure)."""
    main = builder.main if script == "builder.py" else builder_varseqlen.main
    print(f"+ {script} {' '.join(argv)}", flush=True)
    status, out, err = call_main(main, argv)
    if status != 0:
        raise RecordsError(f"{script} {' '.join(argv)} failed: {last_line(err) or last_line(out)}")
    return out + err


def free_gpu_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def perf(script: str, engine: Path, seq: int, batches: tuple[int, ...], setup: Setup, extra: list[str] = ()) -> dict:
    """perf.py / perf_varseqlen.py --enable-graph --json on ``engine``; returns its JSON report
    plus the engine file size.  The peak memory it reports covers this engine's run alone."""
    main = perf_fixed.main if script == "perf.py" else perf_varseqlen.main
    free_gpu_memory()
    with tempfile.TemporaryDirectory() as scratch:
        report_path = Path(scratch) / "perf.json"
        argv = ["-e", str(engine), "-s", str(seq), *[a for b in batches for a in ("-b", str(b))], "--enable-graph",
                "-i", str(setup.iterations), "-w", str(setup.warm_up), "--device", setup.device, "--json", str(report_path),
                *extra]
        print(f"+ {script} {' '.join(argv)}", flush=True)
        status, out, err = call_main(main, argv)
        if status != 0:
            raise RecordsError(f"{script} failed: {last_line(err) or last_line(out)}")
        report = json.loads(report_path.read_text(encoding="utf-8"))
    free_gpu_memory()
    report["engine_bytes"] = engine.stat().st_size
    return report


def by_batch(report: dict) -> dict[int, dict]:
    return {row["batch_size"]: row for row in report["results"]}


def memory_cells(report: dict) -> str:
    peak = report.get("peak_gpu_memory_mib")
    return f"{report['engine_bytes'] / 2**20:.0f} | " + ("—" if peak is None else f"{peak:.0f}")


# ---------------------------------------------------------------------------------------------
# Shared model and engines


class Workspace:
    """One temp folder per run: the random model folder, the hand-made SQuAD set and engines,
    each made on first use and reused by later sections."""

    def __init__(self, root: Path, setup: Setup):
        self.root, self.setup = root, setup
        self._made: dict[str, Path] = {}

    def once(self, key: str, make: Callable[[Path], None], name: str | None = None) -> Path:
        if key not in self._made:
            path = self.root / (name or key)
            make(path)
            self._made[key] = path
        return self._made[key]

    def model(self) -> Path:
        def make(path: Path) -> None:
            print(f"writing a random BERT model {self.setup.model_shape} to {path}", flush=True)
            random_qa_model(self.setup.model_shape, vocab_size=30522, seed=0).save_pretrained(path)
        return self.once("model", make)

    def vocab(self) -> str:
        return minilm_vocab_file()

    def squad(self) -> Path:
        return self.once("squad", lambda path: write_handmade_squad(path), "handmade_squad.json")

    def common(self) -> list[str]:
        return ["--hf", str(self.model()), "--backend", "portable", "--device", self.setup.device]

    def padded_engine(self, precision: str) -> Path:
        """Fixed-length engine with one profile per (batch, seq) of ``setup`` (the packed comparison uses its long S)."""
        setup = self.setup
        flags = {"float": setup.float_flags, "fp32": [],
                 "int8": [*setup.float_flags, *setup.int8_flags, "-j", str(self.squad()), "-v", self.vocab(), "-n", "20",
                          "-p", str(self.root / "calib.cache")],
                 "fp8": [*setup.float_flags, *setup.int8_flags, "--fp8", "-j", str(self.squad()), "-v", self.vocab(),
                         "-n", "20", "-p", str(self.root / "calib.cache")]}[precision]
        batches = (setup.accuracy_batch,) if precision == "fp32" else setup.batches  # FP32: the accuracy reference only

        def make(path: Path) -> None:
            build("builder.py", [*self.common(), "-o", str(path), *flags,
                                 *[a for b in batches for a in ("-b", str(b))],
                                 *[a for s in setup.seq_lengths for a in ("-s", str(s))]])
        return self.once(f"padded_{precision}", make, f"padded_{precision}.engine")

    def packed_engine(self, key: str, folder: Path, extra: list[str] = ()) -> tuple[Path, str]:
        """Variable-length engine (one profile per packed batch) and its build log."""
        logs: dict[str, str] = {}

        def make(path: Path) -> None:
            common = ["--hf", str(folder), "--backend", "portable", "--device", self.setup.device]
            logs[key] = build("builder_varseqlen.py", [*common, "-o", str(path), *self.setup.float_flags, *extra,
                                                       *[a for b in self.setup.packed_batches for a in ("-b", str(b))],
                                                       "-s", str(self.setup.long_seq)])
        path = self.once(key, make, f"{key}.engine")
        return path, logs.get(key, "")
