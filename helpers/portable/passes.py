"""The pipeline that lowers an engine's graph into its plan: an ordered list of passes.

Each pass places steps for the layers it takes and leaves the rest to the passes after it:

1. ``int8_plan.lower_quantized``: INT8 / FP8 engines' quantized GEMMs, attention and
   skip-LayerNorms (on CUDA with the builder's GELU fused into the GEMM before it);
2. ``kernels.plan.lower_fused``: on CUDA, the float patterns of ``kernels/patterns.py`` onto fused
   Triton / cuBLASLt / FlashAttention steps;
3. ``lowering.lower_reference``: every layer left, as its reference step.

A CUDA plan then drops each slot after its last use, so a run holds about one layer's
activations.  ``EngineOptions`` steers the passes (precision policy, kernel switches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from helpers.portable.graph import Graph, Plan
from helpers.portable.int8_plan import lower_quantized
from helpers.portable.kernels.plan import lower_fused
from helpers.portable.lowering import PlanBuilder, lower_reference, with_releases
from helpers.portable.options import EngineOptions

PASSES: tuple[Callable[[PlanBuilder], None], ...] = (lower_quantized, lower_fused, lower_reference)


def build_plan(graph: Graph, device: torch.device, options: EngineOptions, logger: Any = None) -> Plan:
    """The plan of ``graph`` on ``device`` with ``options``' switches and the precision policy of
    the graph's build flags; ``logger`` (an ``ILogger``) hears which dense layers run on sparse
    GEMMs under SPARSE_WEIGHTS."""
    builder = PlanBuilder(graph, device, options.for_flags(graph.flags), logger)
    for lower in PASSES:
        lower(builder)
    plan = builder.plan()
    return with_releases(plan, graph.outputs) if builder.fast else plan


def reference_plan(graph: Graph, device: torch.device) -> Plan:
    """Every layer as its reference step, in the types the engine description gives them (INT8
    layers too: calibration runs this plan)."""
    builder = PlanBuilder(graph, device, EngineOptions(fast_kernels=False))
    lower_reference(builder)
    return builder.plan()
