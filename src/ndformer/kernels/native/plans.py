"""The one native planner: which kernel runs a separable pattern on a grid (shared keys,
or lanes with their stacked regrouping), and the pattern's rules as plain integers (what
the custom ops carry through ``torch.compile``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..._cache import plan_cache
from ...patterns.axis import AllRule, AxisRule, CausalRule, NeighborhoodRule, PartitionRule
from . import lane_plans
from .build import constants, native_lanes
from .lane_plans import LanePlan, SharedPlan, group_plan, lane_plan, shared_plan
from .stack_plans import StackPlan, empty_stack, stack_plan

#: ``auto`` leaves a pattern to the tiled path when more than this fraction of its lane
#: plan's key slots need per-lane gathers (irregular key sets).
MAX_GATHERED = 0.25


@dataclass(frozen=True)
class NativePlan:
    """What the native kernels run for one (pattern rules, grid shape, dtype): the shared-keys
    plan when every query tile shares its keys (windows, stripes, axial), else the lane plan
    with its stacked regrouping (neighborhoods, or any separable pattern)."""

    shared: SharedPlan | None
    lanes: LanePlan | None
    stack: StackPlan | None
    #: Neighborhood rules on some axis (the lane kernel is the fast path for those).
    neighborhood: bool = False

    @property
    def kernel(self) -> str:
        return "shared" if self.shared is not None else "lanes"


def native_plan(
    rules: tuple[AxisRule, ...], shape: tuple[int, ...], dtype: torch.dtype
) -> NativePlan | str:
    """The native plan of a separable pattern (per-axis ``rules``) on a grid of ``shape``,
    or the reason there is none (a ``str``): the one place that decides shared vs lanes vs
    stacked. Needs the library."""
    rules = tuple(rules)
    vl = native_lanes(dtype)
    neighborhood = any(isinstance(r, NeighborhoodRule) for r in rules)
    shared = shared_plan(rules, shape, vl)
    if shared is not None:
        return NativePlan(shared, None, None, neighborhood)
    plan = lane_plan(rules, shape, vl)
    if plan is None:
        return (
            f"has too many keys per query for this pattern (its plan would exceed"
            f" {lane_plans.MAX_SLOTS} keys per query or {lane_plans.MAX_PLAN_ENTRIES} tile slots)"
        )
    c = constants()
    columns = c.stack_columns_f64 if dtype == torch.float64 else c.stack_columns_f32
    stack = stack_plan(rules, shape, vl, columns, c.stack) or empty_stack(plan.tiles, vl, c.stack)
    return NativePlan(None, plan, stack, neighborhood)


def native_declines(plan: NativePlan) -> str | None:
    """Why ``auto`` should leave a pattern the native kernels can run to the tiled path
    (None: it should not): lane plans of patterns other than neighborhoods, or with more
    than ``MAX_GATHERED`` of their slots gathered per lane, are faster tiled."""
    if plan.shared is not None:
        return None
    if not plan.neighborhood:
        return "keeps its lane kernel for neighborhoods; this pattern runs faster tiled"
    if plan.lanes.gathered > MAX_GATHERED:
        return (
            f"would gather {100 * plan.lanes.gathered:.0f}% of the key slots lane by lane"
            f" (more than {100 * MAX_GATHERED:.0f}%): the tiled path is faster"
        )
    return None


@plan_cache(16)
def _group_plan(key: bytes, n: int, vl: int) -> SharedPlan | None:
    return group_plan(np.frombuffer(key, np.int64, n), vl)


def points_plan(groups: torch.Tensor, dtype: torch.dtype) -> NativePlan | str:
    """The shared-keys plan of "attend iff same group" for group ids [N] (points; cached by
    the ids' values), or why there is none."""
    ids = groups.detach().cpu().to(torch.int64).contiguous().numpy()
    shared = _group_plan(ids.tobytes(), len(ids), native_lanes(dtype))
    if shared is None:
        return f"has a group of more than {lane_plans.MAX_SLOTS} tokens"
    return NativePlan(shared, None, None)


# -- rules as integers ----------------------------------------------------------------
_KINDS = {AllRule: 0, PartitionRule: 1, NeighborhoodRule: 2, CausalRule: 3}


def encode_rules(rules: tuple[AxisRule, ...]) -> list[int]:
    """Four integers per axis: the rule's kind and its arguments (``decode_rules`` undoes);
    a neighborhood's third is ``2 * stride + causal``."""
    codes: list[int] = []
    for rule in rules:
        if isinstance(rule, PartitionRule):
            args = (rule.block, rule.dilation, rule.shift)
        elif isinstance(rule, NeighborhoodRule):
            args = (rule.kernel, rule.dilation, 2 * rule.stride + int(rule.causal))
        else:
            args = (0, 0, 0)
        codes += [_KINDS[type(rule)], *args]
    return codes


def decode_rules(codes: list[int]) -> tuple[AxisRule, ...]:
    """The per-axis rules ``encode_rules`` encoded."""
    rules: list[AxisRule] = []
    for i in range(0, len(codes), 4):
        kind, a, b, c = codes[i : i + 4]
        if kind == 1:
            rules.append(PartitionRule(block=a, dilation=b, shift=c))
        elif kind == 2:
            rules.append(NeighborhoodRule(kernel=a, dilation=b, causal=bool(c & 1), stride=c >> 1))
        else:
            rules.append(CausalRule() if kind == 3 else AllRule())
    return tuple(rules)
