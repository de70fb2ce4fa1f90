"""Validate and time the fast kernels (helpers.portable.kernels) and their rival variants on the GPU.

Run on the GPU machine from the repository root: ``python -m bench.kernels_bench [--json OUT]``.
Every variant is first checked against the reference math of ``helpers.portable.ops`` on the
timed shape, then timed (CUDA events, median of 100); the shipped kernel is the winner of each
group.  Rivals that lost are listed with their numbers in docs/perf/KERNELS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.timing import copy_bandwidth_tbps, matmul_peak_tflops, time_cuda, time_graphed
from helpers.portable import kernels, ops
from helpers.portable.kernels.attention import attention_fixed_biased, key_padding_bias
from helpers.portable.kernels.gelu import bias_gelu_into
from helpers.portable.kernels.norms import skip_layernorm_into



def max_error(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    return (reference.float() - candidate.float()).abs().max().item()


class Report:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.failures: list[str] = []

    def check(self, name: str, error: float, tolerance: float) -> None:
        ok = math.isfinite(error) and error <= tolerance
        print(f"check {name}: max|err| {error:.3g} (tol {tolerance:g}) {'ok' if ok else 'FAIL'}", flush=True)
        if not ok:
            self.failures.append(name)

    def time(self, group: str, variant: str, fn, flops: float = 0.0, nbytes: float = 0.0,
             graph: bool = False) -> None:
        """``graph``: time 10 calls captured in one CUDA graph, per call (device time, no launch cost)."""
        try:
            t = time_graphed(fn) if graph else time_cuda(fn)
        except RuntimeError as error:  # a backend that rejects the shape: record, keep going
            print(f"time {group} / {variant}: unsupported ({str(error).splitlines()[0][:120]})", flush=True)
            return
        row = {"group": group, "variant": variant, "median_ms": t.median_ms, "p99_ms": t.p99_ms,
               "tflops": flops / t.median_ms / 1e9 if flops else None,
               "tbps": nbytes / t.median_ms / 1e9 if nbytes else None}
        self.rows.append(row)
        print(f"time {group} / {variant}: {t.median_ms * 1e3:.1f} us", flush=True)

    def table(self) -> str:
        lines = ["| group | variant | median µs | p99 µs | TFLOP/s | TB/s |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            tf = f"{r['tflops']:.0f}" if r["tflops"] else ""
            tb = f"{r['tbps']:.2f}" if r["tbps"] else ""
            lines.append(f"| {r['group']} | {r['variant']} | {r['median_ms'] * 1e3:.1f} | "
                         f"{r['p99_ms'] * 1e3:.1f} | {tf} | {tb} |")
        return "\n".join(lines)


def bench_layernorms(rep: Report, tokens: int, hidden: int) -> None:
    dt = torch.float16
    x = torch.randn(tokens, hidden, dtype=dt, device="cuda")
    skip = torch.randn_like(x)
    gamma = torch.rand(hidden, device="cuda") + 0.5
    beta = torch.randn(hidden, device="cuda")
    bias = torch.randn(hidden, dtype=dt, device="cuda")
    ref = ops.skip_layernorm(x, skip, gamma, beta, bias)
    got = kernels.skip_layernorm(x, skip, gamma, beta, bias)
    rep.check(f"skip_layernorm T={tokens} E={hidden}", max(max_error(r, g) for r, g in zip(ref, got)), 1e-2)
    out = torch.empty_like(x)
    group = f"skipLN T={tokens} E={hidden}"
    row_bytes = tokens * hidden * 2
    rep.time(group, "ops reference", lambda: ops.skip_layernorm(x, skip, gamma, beta, bias), nbytes=4 * row_bytes)
    rep.time(group, "torch add + F.layer_norm", lambda: F.layer_norm(x + skip + bias, (hidden,), gamma.half(),
                                                                      beta.half(), 0.0), nbytes=3 * row_bytes)
    summed = torch.empty_like(x)
    rep.time(group, "triton, with sum", lambda: skip_layernorm_into(out, summed, x, skip, gamma, beta, bias, 0.0),
             nbytes=4 * row_bytes)
    rep.time(group, "triton, no sum (shipped in plans)",
             lambda: skip_layernorm_into(out, None, x, skip, gamma, beta, bias, 0.0), nbytes=3 * row_bytes)

    seq, batch = 384, tokens // 384
    ids = torch.randint(0, 30522, (seq, batch), dtype=torch.int32, device="cuda")
    segs = torch.randint(0, 2, (seq, batch), dtype=torch.int32, device="cuda")
    pos = torch.arange(seq, dtype=torch.int32, device="cuda").unsqueeze(1).expand(seq, batch).contiguous()
    word = torch.randn(30522, hidden, dtype=dt, device="cuda")
    types = torch.randn(2, hidden, dtype=dt, device="cuda")
    positions = torch.randn(512, hidden, dtype=dt, device="cuda")
    ref = ops.embed_layernorm(ids, segs, pos, word, types, positions, gamma, beta)
    got = kernels.embed_layernorm(ids, segs, pos, word, types, positions, gamma, beta)
    rep.check(f"embed_layernorm S={seq} B={batch}", max(max_error(r, g) for r, g in zip(ref, got)), 1e-2)
    group = f"embLN T={seq * batch} E={hidden}"
    rep.time(group, "ops reference", lambda: ops.embed_layernorm(ids, segs, pos, word, types, positions, gamma, beta))
    rep.time(group, "triton", lambda: kernels.embed_layernorm(ids, segs, pos, word, types, positions, gamma, beta),
             nbytes=3 * seq * batch * hidden * 2)


def bench_gemms(rep: Report, tokens: int, hidden: int) -> None:
    dt = torch.float16
    inter = 4 * hidden
    x = torch.randn(tokens, hidden, dtype=dt, device="cuda")
    w = (torch.randn(inter, hidden, device="cuda") / math.sqrt(hidden)).to(dt)
    b = torch.randn(inter, dtype=dt, device="cuda")
    ref = ops.gelu_tanh(ops.linear(x, w, b))
    scale = ref.float().abs().max().item()
    rep.check(f"linear_gelu (cuBLASLt epilogue) T={tokens}", max_error(ref, kernels.linear_gelu(x, w, b)) / scale, 5e-3)
    h = torch.empty(tokens, inter, dtype=dt, device="cuda")

    def linear_then_gelu():
        torch.mm(x, w.t(), out=h)
        bias_gelu_into(h, h, b)

    rep.check(f"mm + triton bias_gelu T={tokens}", (linear_then_gelu(), max_error(ref, h) / scale)[1], 5e-3)
    group = f"FC1+GELU T={tokens} {hidden}->{inter}"
    flops = 2.0 * tokens * hidden * inter
    rep.time(group, "F.linear only (no GELU, bound)", lambda: F.linear(x, w, b), flops=flops)
    rep.time(group, "mm + triton bias_gelu pass", linear_then_gelu, flops=flops)
    rep.time(group, "cuBLASLt GELU_BIAS epilogue", lambda: kernels.linear_gelu(x, w, b), flops=flops)
    rep.time(group, "ops reference (linear, gelu)", lambda: ops.gelu_tanh(ops.linear(x, w, b)), flops=flops)
    for name, n_out, k_in in (("QKV", 3 * hidden, hidden), ("attn out", hidden, hidden), ("FC2", hidden, inter)):
        a = torch.randn(tokens, k_in, dtype=dt, device="cuda")
        wt = (torch.randn(n_out, k_in, device="cuda") / math.sqrt(k_in)).to(dt)
        rep.time(f"{name} GEMM T={tokens} {k_in}->{n_out}", "F.linear (cuBLAS)", lambda a=a, wt=wt: F.linear(a, wt),
                 flops=2.0 * tokens * k_in * n_out)


def bench_attention(rep: Report, seq: int, batch: int, heads: int, head_size: int, check: bool) -> None:
    dt = torch.float16
    hidden = heads * head_size
    qkv = torch.randn(seq, batch, 3 * hidden, dtype=dt, device="cuda")
    mask_idx = torch.randint(seq // 2, seq + 1, (batch,), dtype=torch.int32, device="cuda")
    mask_idx[0] = seq
    if check:
        ref = ops.attention_fixed(qkv, mask_idx, heads)
        got = kernels.attention_fixed(qkv, mask_idx, heads)
        rep.check(f"attention_fixed S={seq} B={batch}", max_error(ref, got), 5e-3)
        ctx_strides = kernels.attention_fixed(qkv, mask_idx, heads)
        print(f"attention_fixed output contiguous: {ctx_strides.is_contiguous()}", flush=True)
    bias = key_padding_bias(mask_idx, seq, dt)
    group = f"attention S={seq} B={batch} N={heads}"
    flops = 4.0 * batch * heads * seq * seq * head_size
    per_head = qkv.view(seq, batch, heads, 3, head_size)
    q, k, v = (per_head[:, :, :, i].permute(1, 2, 0, 3) for i in range(3))
    rep.time(group, "shipped: SDPA cuDNN, seq-major + bias", lambda: kernels.attention_fixed(qkv, mask_idx, heads),
             flops=flops)
    for name, backend in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("mem-efficient", SDPBackend.EFFICIENT_ATTENTION)):
        def run(backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        rep.time(group, f"SDPA {name} + bias, strided views", run, flops=flops)

    def flash_no_mask():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v)
    rep.time(group, "SDPA flash, no mask (bound)", flash_no_mask, flops=flops)
    # Batch-major rival: the same tokens as [B*S, 3E]; flash varlen with padded cu_seqlens and
    # seqused_k = mask_idx masks the keys without any bias tensor.
    qkv_bm = qkv.transpose(0, 1).contiguous().view(batch * seq, heads, 3, head_size)
    cu = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device="cuda")
    qb, kb, vb = (qkv_bm[:, :, i] for i in range(3))

    def flash_varlen_padded():
        return torch.ops.aten._flash_attention_forward(qb, kb, vb, cu, cu, seq, seq, 0.0, False, False,
                                                       seqused_k=mask_idx)[0]
    if check:
        got = flash_varlen_padded().view(batch, seq, hidden).transpose(0, 1)
        rep.check(f"flash varlen padded + seqused_k S={seq} B={batch}",
                  max_error(ops.attention_fixed(qkv, mask_idx, heads), got), 5e-3)
    rep.time(group, "flash varlen batch-major + seqused_k", flash_varlen_padded, flops=flops)
    rep.time(group, "ops reference", lambda: ops.attention_fixed(qkv, mask_idx, heads), flops=flops)


def bench_small_batches(rep: Report, hidden: int = 1024, heads: int = 16) -> None:
    """Device time (graph-captured) of the per-layer pieces at the latency-bound shapes."""
    dt = torch.float16
    inter = 4 * hidden
    weights = {n: (torch.randn(o, i, device="cuda") / math.sqrt(i)).to(dt)
               for n, o, i in (("QKV", 3 * hidden, hidden), ("attn out", hidden, hidden), ("FC1", inter, hidden),
                               ("FC2", hidden, inter))}
    for tokens in (128, 384, 1024, 4096):
        for name, w in weights.items():
            x = torch.randn(tokens, w.shape[1], dtype=dt, device="cuda")
            rep.time(f"{name} GEMM T={tokens} (graph)", "F.linear (cuBLAS)", lambda x=x, w=w: F.linear(x, w),
                     nbytes=w.numel() * 2, graph=True)
        bias = torch.randn(inter, dtype=dt, device="cuda")
        x = torch.randn(tokens, hidden, dtype=dt, device="cuda")
        rep.time(f"FC1 GEMM T={tokens} (graph)", "cuBLASLt GELU_BIAS epilogue",
                 lambda x=x: kernels.linear_gelu(x, weights["FC1"], bias), nbytes=weights["FC1"].numel() * 2, graph=True)
        h = torch.randn(tokens, hidden, dtype=dt, device="cuda")
        gamma, beta = torch.rand(hidden, device="cuda") + 0.5, torch.randn(hidden, device="cuda")
        out = torch.empty_like(h)
        rep.time(f"skipLN T={tokens} (graph)", "triton, no sum",
                 lambda h=h, out=out: skip_layernorm_into(out, None, h, h, gamma, beta, None, 0.0), graph=True)
    for seq in (128, 384):
        for batch in (1, 8, 32, 128):
            qkv = torch.randn(batch, seq, 3 * hidden, dtype=dt, device="cuda")
            mask_idx = torch.randint(seq // 2, seq + 1, (batch,), dtype=torch.int32, device="cuda")
            bias = key_padding_bias(mask_idx, seq, dt)
            qkv_sb = qkv.transpose(0, 1)
            group = f"attention S={seq} B={batch} (graph)"
            flops = 4.0 * batch * heads * seq * seq * (hidden // heads)
            rep.time(group, "SDPA cuDNN + bias, batch-major", lambda q=qkv_sb, b=bias:
                     attention_fixed_biased(q, b, heads), flops=flops, graph=True)
            packed = qkv.view(batch * seq, heads, 3, hidden // heads)
            cu = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device="cuda")
            rep.time(group, "flash varlen + seqused_k, batch-major", lambda p=packed, cu=cu, m=mask_idx, s=seq:
                     torch.ops.aten._flash_attention_forward(p[:, :, 0], p[:, :, 1], p[:, :, 2], cu, cu, s, s, 0.0,
                                                             False, False, seqused_k=m)[0], flops=flops, graph=True)


def bench_weight_layouts(rep: Report, hidden: int = 1024) -> None:
    """cuBLAS on [out, in] weights (x @ Wᵀ) against pre-transposed [in, out] ones (x @ W), with the
    weights rotated through 12 copies (more than L2 holds) as 24 layers stream them in the model."""
    dt = torch.float16
    for tokens in (128, 384, 1024, 49152):
        for name, n_out, k_in in (("QKV", 3 * hidden, hidden), ("attn out", hidden, hidden),
                                  ("FC1", 4 * hidden, hidden), ("FC2", hidden, 4 * hidden)):
            copies = 12 if tokens <= 1024 else 1
            ws = [(torch.randn(n_out, k_in, device="cuda") / math.sqrt(k_in)).to(dt) for _ in range(copies)]
            wts = [w.t().contiguous() for w in ws]
            x = torch.randn(tokens, k_in, dtype=dt, device="cuda")
            flops = 2.0 * tokens * n_out * k_in * copies

            def out_in(x=x, ws=ws):
                for w in ws:
                    F.linear(x, w)

            def in_out(x=x, wts=wts):
                for w in wts:
                    torch.mm(x, w)
            group = f"{name} T={tokens} x{copies} weights (graph)"
            rep.time(group, "[out, in] (F.linear)", out_in, flops=flops, nbytes=2.0 * n_out * k_in * copies, graph=True)
            rep.time(group, "[in, out] (mm)", in_out, flops=flops, nbytes=2.0 * n_out * k_in * copies, graph=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows and checks here")
    parser.add_argument("--only", choices=["layouts"], help="run one experiment only")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}", flush=True)
    peak, bandwidth = matmul_peak_tflops(), copy_bandwidth_tbps()
    print(f"matmul peak fp16 8192^3: {peak:.0f} TFLOP/s; copy: {bandwidth:.2f} TB/s", flush=True)
    rep = Report()
    if args.only == "layouts":
        bench_weight_layouts(rep)
        print(rep.table())
        return 0
    bench_layernorms(rep, 384 * 128, 1024)
    bench_gemms(rep, 384 * 128, 1024)
    for seq, batch in ((384, 128), (128, 128)):
        bench_attention(rep, seq, batch, 16, 64, check=True)
    bench_small_batches(rep)
    print(rep.table())
    print("failures:", rep.failures or "none")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"format_version": 1, "device": torch.cuda.get_device_name(), "matmul_peak_tflops": peak,
                       "copy_tbps": bandwidth, "rows": rep.rows, "failures": rep.failures}, handle, indent=1)
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
