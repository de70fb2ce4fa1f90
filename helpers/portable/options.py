"""How a portable engine runs once loaded: its precision policy and the fast path's kernel switches.

An engine reads one :class:`EngineOptions` when it is deserialized and builds its plan from it;
nothing reads the environment afterwards.  The switches default to the environment variables
below (``=0`` turns one off), so a process can be steered without code, and a caller can pass
its own options through ``Runtime.engine_options`` (a portable extension).  The precision policy
is not a choice at load time: it is what the engine was built for (its builder flags).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

FAST_KERNELS_ENV = "DEMOBERT_FAST_KERNELS"
CUBLASLT_ENV = "DEMOBERT_CUBLASLT"
FEW_ROWS_ENV = "DEMOBERT_FEW_ROWS_GEMM"
PDL_ENV = "DEMOBERT_PDL"
_STRICT_FLAGS = ("PREFER_PRECISION_CONSTRAINTS", "OBEY_PRECISION_CONSTRAINTS")


@dataclass(frozen=True)
class Precision:
    """What the engine computes in, from its builder flags."""

    fp16: bool = False  # FP16 layers and plugin I/O
    int8: bool = False  # INT8 GEMMs (and -imh / -iln plugins) where tensors have ranges
    fp8: bool = False  # those GEMMs as FP8 E4M3 instead
    strict: bool = False  # layers given a float precision keep it
    sparse: bool = False  # FP16 GEMMs of 2:4 weights on sparse kernels (CUDA)

    @classmethod
    def from_flags(cls, flags: Iterable[str]) -> Precision:
        names = set(flags)
        return cls(fp16="FP16" in names, int8="INT8" in names, fp8="FP8" in names,
                   strict=any(flag in names for flag in _STRICT_FLAGS), sparse="SPARSE_WEIGHTS" in names)

    @property
    def quantized(self) -> bool:
        return self.int8 or self.fp8

    def describe(self) -> str:
        base = "FP16" if self.fp16 else "FP32"
        gemms = " + FP8 GEMMs" if self.fp8 else " + INT8" if self.int8 else ""
        extras = [name for name, on in (("strict types", self.strict), ("2:4 sparse weights", self.sparse)) if on]
        return base + gemms + (f" ({', '.join(extras)})" if extras else "")


def _switch(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "1") != "0"


@dataclass(frozen=True)
class EngineOptions:
    """The precision policy and every kernel switch of a loaded engine."""

    fast_kernels: bool = True  # CUDA: fused Triton / cuBLASLt / FlashAttention steps instead of the reference plan
    cublaslt: bool = True  # FP16 GEMMs on cuBLASLt with per-shape tuned algorithms (else PyTorch's call)
    few_rows_gemm: bool = True  # batch-1 token counts: the Triton few-rows GEMM instead of cuBLASLt
    pdl: bool = True  # batch-1 token counts: Triton kernels launched with programmatic dependent launch
    precision: Precision = Precision()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> EngineOptions:
        """The switches as the environment sets them (each on unless its variable is ``0``)."""
        env = os.environ if environ is None else environ
        return cls(fast_kernels=_switch(env, FAST_KERNELS_ENV), cublaslt=_switch(env, CUBLASLT_ENV),
                   few_rows_gemm=_switch(env, FEW_ROWS_ENV), pdl=_switch(env, PDL_ENV))

    def for_flags(self, flags: Iterable[str]) -> EngineOptions:
        """These switches with the precision policy of an engine built with ``flags``."""
        return dataclasses.replace(self, precision=Precision.from_flags(flags))

    def switches(self) -> list[str]:
        """One ``name: on/off (VARIABLE=…)`` line per kernel switch."""
        table = ((FAST_KERNELS_ENV, "fast kernels", self.fast_kernels), (CUBLASLT_ENV, "cuBLASLt GEMMs", self.cublaslt),
                 (FEW_ROWS_ENV, "few-rows GEMM", self.few_rows_gemm), (PDL_ENV, "PDL launches", self.pdl))
        return [f"{label}: {'on' if on else 'off'} ({variable}={'1' if on else '0'})" for variable, label, on in table]

    def describe(self) -> list[str]:
        """The precision policy and the switches, one line each (``perf.py --verbose`` prints them)."""
        return [f"precision: {self.precision.describe()}", *self.switches()]
