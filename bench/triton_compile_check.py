#!/usr/bin/env python3
"""Compile the 8-bit engine's Triton kernels for Hopper (sm_90) with the installed Triton, no GPU needed.

The GPU machines may run another Triton than the one a change was written against, and the
interpreter (``TRITON_INTERPRET=1``) never compiles: a kernel can pass there and fail to compile on
the device (Triton 3.6, for one, rejects a ``@triton.jit`` function whose returns differ in type,
even under a constexpr branch).  This compiles every variant the INT8 / FP8 engines launch (GEMM
plain and TMA, INT8 or E4M3 operands, each epilogue output; quantize; skip-LayerNorm and ``-imh``
attention with each output) and prints one line per kernel, exiting 1 if any fails.

    python -m bench.triton_compile_check
    PYTHONPATH=/path/to/triton-3.6/site-packages python -m bench.triton_compile_check
"""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from helpers.portable.kernels import int8_attention as ia
from helpers.portable.kernels import int8_gemm as ig
from helpers.portable.kernels import quant_kernels as qk

TARGET = GPUTarget("cuda", 90, 32)
INTEGER_ARGS = {"M", "N", "K", "stride_a", "stride_w", "stride_out", "m_bucket", "numel", "n_rows", "hidden",
                "seq_len", "batch"}


def jit_function(kernel) -> JITFunction:
    """The JIT function under autotuning / heuristics wrappers."""
    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def compile_kernel(kernel, pointers: dict[str, str], constants: dict, warps: int = 4,
                   descriptors: dict[str, str] | None = None) -> str | None:
    """Compile for ``TARGET``; None on success, else the error.  Arguments not named take their
    type from their name: ``*_ptr`` float32 pointers, ``INTEGER_ARGS`` int32, the rest float32."""
    fn = jit_function(kernel)
    signature, constexprs = {}, {}
    for param in fn.params:
        name = param.name
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", constants[name]
        elif descriptors and name in descriptors:
            signature[name] = descriptors[name]
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, "*fp32")
        else:
            signature[name] = "i32" if name in INTEGER_ARGS else "fp32"
    try:
        triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=TARGET, options={"num_warps": warps})
    except Exception as error:  # every compiler failure is reported, whatever its class
        return f"{type(error).__name__}: {error}"
    return None


def variants():
    """(kernel, pointer types, constants, warps, descriptors) of every variant the engines launch."""
    gemm = dict(HAS_BIAS=True, ERF=False, VALUE_DTYPE=1, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8)
    for fp8 in (False, True):
        operand = "fp8e4nv" if fp8 else "i8"
        for mode, out in ((qk.INT8_CODES, "*i8"), (qk.FP8_CODES, "*fp8e4nv"), (qk.FLOAT_VALUES, "*fp16")):
            for gelu in (False, True):
                yield (ig._int8_gemm_kernel, {"a_ptr": f"*{operand}", "w_ptr": f"*{operand}", "out_ptr": out},
                       dict(gemm, GELU=gelu, MODE=mode, FP8=fp8, EVEN_K=True), 4, None)
                tile = f"tensordesc<{operand}[128, 64]>"
                yield (ig._int8_gemm_tma_kernel, {"out_ptr": out},
                       dict(gemm, GELU=gelu, MODE=mode, FP8=fp8, PROGRAMS_PER_SM=1), 4, {"a_desc": tile, "w_desc": tile})
    for mode, out in ((qk.INT8_CODES, "*i8"), (qk.FP8_CODES, "*fp8e4nv")):
        yield qk._quantize_kernel, {"x_ptr": "*fp16", "out_ptr": out}, dict(MODE=mode, BLOCK=1024), 4, None
    for mode, out in ((qk.INT8_CODES, "*i8"), (qk.FP8_CODES, "*fp8e4nv"), (qk.FLOAT_VALUES, "*fp16")):
        # FP8_COPY: an -iln output read by FP8 GEMMs and skip-LayerNorms, written as int8 codes and
        # E4M3 codes of the same value.
        for fp8_copy in (False, True) if mode == qk.INT8_CODES else (False,):
            yield (qk._int8_skip_layernorm_kernel,
                   {"x_ptr": "*i8", "skip_ptr": "*i8", "out_ptr": out, "fp8_copy_ptr": "*fp8e4nv"},
                   dict(HAS_BIAS=True, X_CODES=True, SKIP_CODES=True, OUT=mode, FP8_COPY=fp8_copy, VALUE_DTYPE=1, ROWS=4,
                        BLOCK=1024), 4, None)
        for seq_len, (block_m, block_n, warps) in ((128, ia.attention_blocks(128)), (384, ia.attention_blocks(384))):
            yield (ia._int8_attention_kernel, {"qkv_ptr": "*i8", "mask_ptr": "*i32", "out_ptr": out},
                   dict(HEADS=16, HEAD=64, HEAD_BLOCK=64, HAS_MASK=True, QKV_CODES=True, OUT=mode, VALUE_DTYPE=1,
                        CLAMP=True, ONE_KEY_BLOCK=seq_len <= block_n, BLOCK_M=block_m, BLOCK_N=block_n), warps, None)


def main() -> int:
    failures = 0
    for kernel, pointers, constants, warps, descriptors in variants():
        error = compile_kernel(kernel, pointers, constants, warps, descriptors)
        shown = {k: v for k, v in constants.items() if k in ("FP8", "MODE", "OUT", "GELU", "FP8_COPY", "BLOCK_M", "BLOCK_N")}
        print(f"{'ok  ' if error is None else 'FAIL'} {jit_function(kernel).__name__} {shown}", flush=True)
        if error is not None:
            failures += 1
            print(f"     {error[:2000]}", flush=True)
    print(f"Triton {triton.__version__}, sm_90: {failures} of the variants failed to compile", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
