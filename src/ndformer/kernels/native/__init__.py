"""Native CPU kernels for separable patterns on grids and groups of points (``cpp/``),
compiled once per machine, as PyTorch custom ops with forward and backward.

Three kernels, all computing only the pairs the pattern allows, in float32 and float64:

- the *shared-keys* kernel (``shared.h``), for patterns whose queries come in groups that
  share every key (windows — shifted, dilated, non-dividing —, stripes, axial; groups of
  points): up to 4 SIMD registers of queries per tile against the group's keys read in
  place as broadcasts; its backward runs a group at a time, which owns its keys'
  gradients;
- the *lane* kernel (``lanes.h``), for any separable pattern: VL queries (one register)
  walk their key lists together; a slot's VL keys are VL consecutive tokens (a vector
  load of K^T), one shared token, or a few tokens apart at borders (a permute);
- the *stacked* kernel (``stack.h``), for the lane tiles of neighborhoods whose keys are
  one vector load each (inside the grid and at clamped borders): up to 3 tiles stacked
  along the grid share each loaded key vector from registers.

The forward saves the log-sum-exp of every query; the backward recomputes scores and
probabilities from it (FlashAttention-2 style) and produces dQ, dK, dV over the allowed
pairs only, with O(N * head_dim) memory: dK^T and dV^T accumulate in each worker's own
scratch, so no two threads ever add to one location. ``plans.py`` decides which kernel
runs; ``ops.py`` registers the custom ops; ``build.py`` compiles and loads the library;
``abi.py`` mirrors its argument structs.
"""

from __future__ import annotations

import torch

from .build import compiler, constants, library, native_lanes, native_status
from .lane_plans import (
    BCAST,
    GATHER,
    PERM,
    SHARED_GROUP,
    SHIFT,
    SKIP,
    LanePlan,
    SharedPlan,
    group_plan,
    lane_plan,
    shared_plan,
)
from .plans import (
    MAX_GATHERED,
    NativePlan,
    encode_rules,
    native_declines,
    native_plan,
    points_plan,
)
from .stack_plans import StackPlan, empty_stack, stack_plan

DTYPES = (torch.float32, torch.float64)


def native_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """None if the native kernels can run on ``device`` in ``dtype``, else the reason."""
    if device.type != "cpu":
        return f"runs on CPU; the inputs are on {device}"
    if dtype not in DTYPES:
        return f"takes float32 or float64; the inputs are {dtype}"
    if library().lib is None:
        return library().reason
    return None


def _ops():
    from . import ops  # registers the custom ops on first use

    return ops


def native_attention(
    q, k, v, rules, shape, scale: float, needs_grad: bool, lse: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q, k [B, heads, N, E], v [B, heads, N, Ev] -> (out [B, heads, N, Ev], the log-sum-exp
    [B, heads, N] if ``lse`` else None) through the native custom op for a separable
    pattern's per-axis ``rules`` on a grid of ``shape``. Differentiable in q, k, v (through
    out and lse); the log-sum-exp is computed only when ``needs_grad`` or ``lse``."""
    out, saved = _ops().native_attention_op(
        q, k, v, encode_rules(tuple(rules)), list(shape), float(scale), bool(needs_grad or lse)
    )
    return out, saved if lse else None


def native_group_attention(
    q, k, v, groups: torch.Tensor, scale: float, needs_grad: bool, lse: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention iff ``groups[i] == groups[j]`` (ids [N], e.g. points' serialized groups)
    through the native shared-keys custom op; shapes and outputs as ``native_attention``."""
    out, saved = _ops().native_groups_op(q, k, v, groups, float(scale), bool(needs_grad or lse))
    return out, saved if lse else None


__all__ = [
    "BCAST",
    "GATHER",
    "MAX_GATHERED",
    "PERM",
    "SHARED_GROUP",
    "SHIFT",
    "SKIP",
    "LanePlan",
    "NativePlan",
    "SharedPlan",
    "StackPlan",
    "compiler",
    "constants",
    "empty_stack",
    "encode_rules",
    "group_plan",
    "lane_plan",
    "library",
    "native_attention",
    "native_declines",
    "native_group_attention",
    "native_lanes",
    "native_plan",
    "native_status",
    "native_unavailable",
    "points_plan",
    "shared_plan",
    "stack_plan",
]
