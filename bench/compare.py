"""This project's engine against the PyTorch peers and the hardware floor, in one GPU process.

For every model × sequence length × batch: the portable engine built through the builder's code
path from a random HuggingFace BertForQuestionAnswering (with and without CUDA graph), HF eager
(SDPA attention), HF captured in a CUDA graph, optionally HF + torch.compile captured in a CUDA
graph (on the six shapes of GOALS_MS only: inductor compiles each shape anew, 10-20 s each), and the floor
max(FLOPs / measured fp16 matmul peak, encoder weight bytes / measured copy bandwidth), also with
the matmul rate the card sustains at its power cap (long batch-128 runs are held to it).  Every
runner is timed the same way (bench.timing.time_cuda: CUDA events, warm-up, median and p99).
Before timing, the engine's logits are checked against HF's.

Run from the repository root on the GPU machine:
    python -m bench.compare --out-dir docs/perf [--models base,large] [--seqs 128,384]
        [--batches 1,8,32,128] [--quick] [--compile]
Prints a Markdown table; writes compare.json (format_version) and compare.png into --out-dir.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

import builder
from bench.timing import Timing, copy_bandwidth_tbps, matmul_peak_tflops, sustained_matmul_tflops, time_cuda
from helpers.files import write_bytes_atomically, write_text_atomically
from helpers.portable.options import FAST_KERNELS_ENV
from helpers.runner import EngineRunner

FORMAT_VERSION = 1
LOGIT_TOLERANCE = 2e-2
COMPILE_PEER = "HF compile graph"
REFERENCE_BATCH = 8
MODELS = {  # (layers, hidden, heads, intermediate)
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}
VOCAB, TYPES, MAX_POSITIONS = 30522, 2, 512
# Latency targets (ms) on the H100 for six BERT shapes; --quick times only these.
GOALS_MS = {("large", 128, 1): 0.70, ("large", 384, 1): 0.90, ("large", 128, 128): 15.5,
            ("large", 384, 128): 48.0, ("base", 128, 1): 0.30, ("base", 384, 128): 14.0}


class CompareError(RuntimeError):
    pass


@dataclass
class Row:
    model: str
    seq_len: int
    batch: int
    floor_ms: float
    floor_bound: str
    sustained_floor_ms: float = float("nan")
    max_logit_error: float = float("nan")
    timings: dict[str, dict] = field(default_factory=dict)
    goal_ms: float | None = None
    max_error_vs_reference: float = float("nan")
    reference_error_vs_hf: float = float("nan")
    hf_graph_capture: str = ""
    compile_s: float = float("nan")
    compile_max_error: float = float("nan")
    profile: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.max_logit_error <= LOGIT_TOLERANCE and self.max_error_vs_reference <= LOGIT_TOLERANCE


def parse_list(text: str, cast=int) -> list:
    try:
        return [cast(item) for item in text.split(",") if item]
    except ValueError:
        raise CompareError(f"not a comma-separated list: {text!r}") from None


def gpu_models(text: str) -> list[str]:
    """The ``--models`` list of a GPU bench script, checked against ``MODELS``, on a machine with CUDA."""
    models = parse_list(text, str)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise CompareError(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    if not torch.cuda.is_available():
        raise CompareError("needs a CUDA GPU")
    return models


def save_random_model(name: str, folder: str) -> None:
    """A random BertForQuestionAnswering whose GELU is the engine's tanh form (HF's fused
    ``gelu_pytorch_tanh``), saved as safetensors for the builder's HF loader."""
    from transformers import BertConfig, BertForQuestionAnswering

    layers, hidden, heads, inter = MODELS[name]
    config = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=inter, max_position_embeddings=MAX_POSITIONS, type_vocab_size=TYPES,
                        hidden_act="gelu_pytorch_tanh")
    torch.manual_seed(0)
    BertForQuestionAnswering(config).save_pretrained(folder, safe_serialization=True)


def load_hf(folder: str) -> torch.nn.Module:
    from transformers import BertForQuestionAnswering

    return BertForQuestionAnswering.from_pretrained(folder, attn_implementation="sdpa",
                                                    dtype=torch.float16).cuda().eval()


def floor_ms(name: str, seq: int, batch: int, peak_tflops: float, bandwidth_tbps: float) -> tuple[float, str]:
    layers, hidden, _heads, inter = MODELS[name]
    tokens = seq * batch
    flops = tokens * (layers * (2 * (4 * hidden * hidden + 2 * hidden * inter) + 4 * seq * hidden) + 4 * hidden)
    weight_bytes = 2 * (layers * (4 * hidden * hidden + 2 * hidden * inter + 9 * hidden + inter) + 2 * hidden + 2)
    compute_ms, memory_ms = flops / peak_tflops / 1e9, weight_bytes / bandwidth_tbps / 1e9
    return max(compute_ms, memory_ms), "matmul" if compute_ms >= memory_ms else "weights"


def make_inputs(batch: int, seq: int, padded: bool, seed: int) -> dict[str, torch.Tensor]:
    gen = np.random.default_rng(seed)
    mask = np.ones((batch, seq), dtype=np.int32)
    if padded:  # leading valid tokens, the rest padding: what the engine's mask index expects
        for b, valid in enumerate(gen.integers(seq // 2, seq + 1, batch)):
            mask[b, valid:] = 0
    return {
        "input_ids": torch.from_numpy(gen.integers(0, VOCAB, (batch, seq), dtype=np.int32)).cuda(),
        "segment_ids": torch.from_numpy(gen.integers(0, TYPES, (batch, seq), dtype=np.int32)).cuda(),
        "input_mask": torch.from_numpy(mask).cuda(),
    }


class HfRunner:
    """HF forward on static input tensors; an all-ones mask is passed as None (same math, and
    HF's all-ones test would read the mask back to the host, which a CUDA graph cannot hold)."""

    def __init__(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]):
        self.model = model
        self.ids = inputs["input_ids"].long()
        self.types = inputs["segment_ids"].long()
        mask = inputs["input_mask"]
        self.mask = None if bool((mask == 1).all()) else mask.long()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_out: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.inference_mode()
    def forward(self) -> torch.Tensor:
        out = self.model(input_ids=self.ids, token_type_ids=self.types, attention_mask=self.mask)
        return torch.stack([out.start_logits, out.end_logits], dim=-1)

    def capture(self) -> str:
        """Capture the forward in a CUDA graph; returns how (see ``hf_blind_to_capture``)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.forward()
        torch.cuda.current_stream().wait_stream(stream)
        fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        attempts = [("HF blind to capture, fused SDPA", hf_blind_to_capture, fused),
                    ("fused SDPA only", contextlib.nullcontext, fused),
                    ("as is", contextlib.nullcontext, None)]
        for how, blind, backends in attempts:
            graph = torch.cuda.CUDAGraph()
            try:
                backend_choice = sdpa_kernel(backends) if backends else contextlib.nullcontext()
                with blind(), backend_choice, torch.cuda.graph(graph):
                    self.static_out = self.forward()
            except RuntimeError as error:
                print(f"  HF capture ({how}) failed: {str(error).splitlines()[0][:120]}", flush=True)
                torch.cuda.synchronize()
                continue
            self.graph = graph
            return how
        raise RuntimeError("HF could not be captured in a CUDA graph")

    def replay(self) -> None:
        assert self.graph is not None
        self.graph.replay()


@contextlib.contextmanager
def hf_blind_to_capture():
    """Hide stream capture from transformers while capturing.

    Seeing a capture, HF 5.17 took a path whose SDPA call ran 3.4x slower than eager (measured on
    an H200); the eager path with ``attention_mask=None`` reads nothing back to the host, so it can
    be captured as it is.  When it cannot, ``HfRunner.capture`` falls back and says so.
    """
    modules = [m for name, m in list(sys.modules.items())
               if name.startswith("transformers") and hasattr(m, "is_cuda_stream_capturing")]
    saved = [m.is_cuda_stream_capturing for m in modules]
    for module in modules:
        module.is_cuda_stream_capturing = lambda: False
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.is_cuda_stream_capturing = original


class EngineUnderTest:
    """The portable engine built by builder.py from the HF folder, run through helpers.runner:
    the fast CUDA path timed with and without its CUDA graph, and the reference plan (the same
    engine file loaded with DEMOBERT_FAST_KERNELS=0) for the accuracy check."""

    def __init__(self, engine_path: str, fast: bool):
        saved = os.environ.get(FAST_KERNELS_ENV)
        os.environ[FAST_KERNELS_ENV] = "1" if fast else "0"
        try:
            self.runner = EngineRunner(engine_path, device="cuda", enable_graph=fast)
        finally:
            if saved is None:
                del os.environ[FAST_KERNELS_ENV]
            else:
                os.environ[FAST_KERNELS_ENV] = saved

    def activate(self, batch: int, seq: int, inputs: dict[str, torch.Tensor]) -> None:
        self.runner.activate(batch, seq)
        self.runner.copy_inputs(inputs)
        self.runner.synchronize()

    def eager(self) -> None:
        saved, self.runner.enable_graph = self.runner.enable_graph, False
        try:
            self.runner.execute()
        finally:
            self.runner.enable_graph = saved

    def logits(self) -> torch.Tensor:
        self.eager()
        self.runner.synchronize()
        out = self.runner.output()
        return out.float().reshape(out.shape[0], out.shape[1], 2).clone()

    def time(self, iterations: int, graph: bool) -> Timing:
        with torch.cuda.stream(self.runner.stream):
            return time_cuda(self.runner.execute if graph else self.eager, iterations=iterations)


def build_engine(folder: str, path: str, batches: list[int], seqs: list[int]) -> None:
    """builder.py's own code path: ``builder.py --hf FOLDER --fp16 -b ... -s ... --backend portable``."""
    argv = ["--hf", folder, "--fp16", "-o", path, "--backend", "portable", "--device", "cuda"]
    argv += [a for b in batches for a in ("-b", str(b))] + [a for s in seqs for a in ("-s", str(s))]
    if builder.main(argv) != 0:
        raise CompareError(f"builder.py failed for {folder}")


def timed(label: str, fn: Callable[[], Timing]) -> dict:
    try:
        t = fn()
    except Exception as error:  # a peer that fails on a shape is reported, not fatal
        print(f"  {label}: failed ({type(error).__name__}: {str(error).splitlines()[0][:160]})", flush=True)
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    print(f"  {label}: median {t.median_ms:.3f} ms, p99 {t.p99_ms:.3f} ms", flush=True)
    return asdict(t)


def compare_shape(row: Row, fast: EngineUnderTest, reference: EngineUnderTest, hf: torch.nn.Module,
                  hf_compiled: torch.nn.Module | None, iterations: int, with_profile: bool) -> None:
    print(f"{row.model} S={row.seq_len} B={row.batch}", flush=True)
    check_inputs = make_inputs(row.batch, row.seq_len, padded=True, seed=1)
    fast.activate(row.batch, row.seq_len, check_inputs)
    fast_logits = fast.logits()
    hf_logits = HfRunner(hf, check_inputs).forward().float()
    # Sequences are independent: the reference plan (unfused, FP32 attention scores) checks the
    # first REFERENCE_BATCH of them, which bounds its memory.
    head = min(row.batch, REFERENCE_BATCH)
    reference.activate(head, row.seq_len, {k: v[:head].contiguous() for k, v in check_inputs.items()})
    reference_logits = reference.logits()
    row.max_logit_error = (fast_logits - hf_logits).abs().max().item()
    row.max_error_vs_reference = (fast_logits[:head] - reference_logits).abs().max().item()
    row.reference_error_vs_hf = (reference_logits - hf_logits[:head]).abs().max().item()
    print(f"  max |fast - HF| = {row.max_logit_error:.3g}, |fast - reference plan| = "
          f"{row.max_error_vs_reference:.3g}, |reference - HF| = {row.reference_error_vs_hf:.3g} "
          f"({'ok' if row.passed else 'ABOVE TOLERANCE'})", flush=True)

    inputs = make_inputs(row.batch, row.seq_len, padded=False, seed=2)
    fast.activate(row.batch, row.seq_len, inputs)
    for graph in (False, True):
        label = "ours graph" if graph else "ours eager"
        row.timings[label] = timed(label, lambda graph=graph: fast.time(iterations, graph))
    if with_profile:
        row.profile = profile_kernels(fast.eager)
        spans = ", ".join(f"{k} {v:.3f}" for k, v in row.profile["category_ms"].items())
        print(f"  kernels per forward: {row.profile['kernel_ms']:.3f} ms ({spans})", flush=True)
        for k in row.profile["top_kernels"][:5]:
            print(f"    {k['us_per_forward']:9.1f} us  x{k['calls_per_forward']:.0f}  {k['name']}", flush=True)
    hf_eager = HfRunner(hf, inputs)
    row.timings["HF eager"] = timed("HF eager", lambda: time_cuda(hf_eager.forward, iterations=iterations))

    def hf_graph() -> Timing:
        row.hf_graph_capture = hf_eager.capture()
        return time_cuda(hf_eager.replay, iterations=iterations)
    row.timings["HF graph"] = timed("HF graph", hf_graph)
    hf_eager.graph = None
    if hf_compiled is not None and row.goal_ms is not None:
        compiled = HfRunner(hf_compiled, inputs)

        def compiled_graph() -> Timing:
            expected = hf_eager.forward().float()
            started = time.perf_counter()
            compiled.capture()  # its warm-up forwards compile this shape
            row.compile_s = time.perf_counter() - started
            timing = time_cuda(compiled.replay, iterations=iterations)
            assert compiled.static_out is not None
            row.compile_max_error = (compiled.static_out.float() - expected).abs().max().item()
            print(f"  HF compile: compiled and captured in {row.compile_s:.0f} s, max |compiled - HF eager| = "
                  f"{row.compile_max_error:.3g}", flush=True)
            return timing
        row.timings[COMPILE_PEER] = timed(COMPILE_PEER, compiled_graph)
        compiled.graph = None
    torch.cuda.empty_cache()


KERNEL_CATEGORIES = (  # first match wins: attention kernels are often CUTLASS kernels too
    ("attention", ("fmha", "flash", "attention", "sdpa", "cudnn")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "sm90_", "cublas")),
    ("layernorm", ("layernorm",)),
    ("gelu", ("gelu",)),
)


def kernel_category(name: str) -> str:
    lowered = name.lower()
    return next((cat for cat, keys in KERNEL_CATEGORIES if any(k in lowered for k in keys)), "other")


def profile_kernels(run: Callable[[], None], iterations: int = 3) -> dict:
    """Device time per kernel category and the top kernels, per forward (eager launches)."""
    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iterations):
            run()
        torch.cuda.synchronize()
    categories: dict[str, float] = {}
    kernels = []
    for event in prof.key_averages():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = getattr(event, "self_device_time_total", 0.0) / iterations
        categories[kernel_category(event.key)] = categories.get(kernel_category(event.key), 0.0) + us
        kernels.append({"name": event.key[:90], "us_per_forward": us, "calls_per_forward": event.count / iterations})
    kernels.sort(key=lambda k: -k["us_per_forward"])
    return {"category_ms": {k: v / 1e3 for k, v in sorted(categories.items())},
            "kernel_ms": sum(categories.values()) / 1e3, "top_kernels": kernels[:8]}


def median(row: Row, label: str) -> float | None:
    entry = row.timings.get(label, {})
    return entry.get("median_ms")


def markdown_table(rows: list[Row], peers: list[str]) -> str:
    head = ["model", "S × B", "ours graph ms", "ours eager ms", *[f"{p} ms" for p in peers], "floor ms",
            "sustained floor ms", "goal ms", "ours / best peer", "ours / floor", "max Δlogits vs HF / ref"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ours = median(row, "ours graph")
        peer_times = [median(row, p) for p in peers]
        best_peer = min((t for t in peer_times if t), default=None)

        def fmt(value: float | None, digits: int = 3) -> str:
            return f"{value:.{digits}f}" if value is not None else "—"
        cells = [row.model, f"{row.seq_len} × {row.batch}", fmt(ours), fmt(median(row, "ours eager")),
                 *[fmt(t) for t in peer_times], f"{fmt(row.floor_ms)} ({row.floor_bound})", fmt(row.sustained_floor_ms),
                 fmt(row.goal_ms, 2) if row.goal_ms else "",
                 fmt(ours / best_peer, 2) if ours and best_peer else "—",
                 fmt(ours / row.floor_ms, 2) if ours else "—",
                 f"{row.max_logit_error:.2g} / {row.max_error_vs_reference:.2g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[Row], labels: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r.model, r.seq_len) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (model, seq) in zip(axes[0], panels):
        subset = sorted((r for r in rows if (r.model, r.seq_len) == (model, seq)), key=lambda r: r.batch)
        batches = [r.batch for r in subset]
        for label in labels:
            points = [(r.batch, r.batch / (median(r, label) / 1e3)) for r in subset if median(r, label)]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.plot(batches, [r.batch / (r.floor_ms / 1e3) for r in subset], "k--", label="floor")
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="sequences / s", title=f"BERT-{model}, S={seq}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    write_bytes_atomically(path, image.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Portable engine vs PyTorch peers vs the floor, on one GPU.")
    parser.add_argument("--models", default="base,large")
    parser.add_argument("--seqs", default="128,384")
    parser.add_argument("--batches", default="1,8,32,128")
    parser.add_argument("--quick", action="store_true", help="only the six shapes with latency targets, 100 iterations")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--compile", action="store_true",
                        help="also time HF + torch.compile (inductor, default mode) in a CUDA graph, on the goal shapes")
    parser.add_argument("--profile", action="store_true",
                        help="also record the engine's device time per kernel category (torch.profiler)")
    parser.add_argument("--out-dir", default=".", help="where compare.json and compare.png go")
    args = parser.parse_args(argv)
    try:
        seqs, batches = parse_list(args.seqs), parse_list(args.batches)
        if args.iterations < 100:
            raise CompareError("--iterations must be at least 100 (the median of fewer is noise)")
        models = gpu_models(args.models)
        os.makedirs(args.out_dir, exist_ok=True)
        shapes = sorted(GOALS_MS) if args.quick else [(m, s, b) for m in models for s in seqs for b in batches]
        return run(shapes, args)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(shapes: list[tuple[str, int, int]], args: argparse.Namespace) -> int:
    import transformers

    peak, bandwidth = matmul_peak_tflops(), copy_bandwidth_tbps()
    sustained = sustained_matmul_tflops()
    device = torch.cuda.get_device_name()
    print(f"{device}: fp16 matmul 8192³ {peak:.0f} TFLOP/s (burst), {sustained:.0f} TFLOP/s (sustained), copy "
          f"{bandwidth:.2f} TB/s; torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    rows: list[Row] = []
    for model_name in sorted({m for m, _, _ in shapes}):
        model_shapes = sorted(s for s in shapes if s[0] == model_name)
        with tempfile.TemporaryDirectory() as folder:
            save_random_model(model_name, folder)
            engine_path = os.path.join(folder, "bert.engine")
            build_engine(folder, engine_path, sorted({b for _, _, b in model_shapes}),
                         sorted({s for _, s, _ in model_shapes}))
            hf = load_hf(folder)
            hf_compiled = torch.compile(hf, dynamic=False) if args.compile else None
            fast, reference = EngineUnderTest(engine_path, fast=True), EngineUnderTest(engine_path, fast=False)
            for _, seq, batch in model_shapes:
                floor, bound = floor_ms(model_name, seq, batch, peak, bandwidth)
                row = Row(model_name, seq, batch, floor, bound, goal_ms=GOALS_MS.get((model_name, seq, batch)),
                          sustained_floor_ms=floor_ms(model_name, seq, batch, sustained, bandwidth)[0])
                compare_shape(row, fast, reference, hf, hf_compiled, args.iterations, args.profile)
                rows.append(row)
            del hf, hf_compiled, fast, reference
            torch.cuda.empty_cache()
    peers = ["HF eager", "HF graph"] + ([COMPILE_PEER] if args.compile else [])
    table = markdown_table(rows, peers)
    print(table)
    write_text_atomically(os.path.join(args.out_dir, "compare.json"), json.dumps({
        "format_version": FORMAT_VERSION, "device": device, "torch": torch.__version__,
        "transformers": transformers.__version__, "matmul_peak_tflops": peak,
        "sustained_matmul_tflops": sustained, "copy_tbps": bandwidth,
        "logit_tolerance": LOGIT_TOLERANCE, "rows": [asdict(r) for r in rows], "table_markdown": table}, indent=1))
    plot(rows, ["ours graph", "ours eager", *peers], os.path.join(args.out_dir, "compare.png"))
    failed = [r for r in rows if not r.passed]
    for r in failed:
        print(f"logits beyond {LOGIT_TOLERANCE} of HF or of the reference plan: {r.model} S={r.seq_len} B={r.batch}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
