"""Backends: every way ``attend`` can compute a pattern, each with its capability check.

A backend answers two questions about a call (pattern, layout, device, dtype, heads,
autograd): ``supports`` — can it compute it exactly? (None, or the reason it cannot) —
and, for ``backend="auto"`` only, ``declines`` — should it, when a later backend is the
better choice? (None, or why not). ``auto`` walks ``AUTO_ORDER`` for the inputs' device
and runs the first backend that supports and does not decline the call;
``backend=NAME`` runs that backend or raises its reason (``choice.py``). ``ndformer info``,
``bench`` and the error messages all read these same checks, so there is one source of
truth. A call that asks for the log-sum-exp (``return_lse``, extra keys) runs only on
backends that compute it (``returns_lse``).

``HeadSplit`` is composition, not a backend: ``auto`` (and a named backend that cannot
take the split whole) runs each head group through its own pattern's choice.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kernels import block_sparse_attention, local_plan, tiled_attention
from .kernels import native as native_kernels
from .kernels.flex import flex_attention, flex_unavailable
from .kernels.groups import group_attention, scene_attention
from .kernels.keysets import keyset_attention
from .kernels.natten import natten_attention, natten_unavailable
from .kernels.reference import reference_attention, reference_attention_lse
from .layout import FixedPoints, Grid, Points, as_points
from .patterns import HeadSplit, KeySetPattern, Pattern, Separable, Window
from .patterns.axis import AllRule, PartitionRule
from .patterns.sorted import SortedGroups


@dataclass(frozen=True)
class Call:
    """One attention call as the backends see it: everything they decide on, no tensors.

    ``heads`` and ``head_dim`` are q's; ``needs_grad`` says whether autograd will want
    gradients through the call; ``lse``, whether the call returns the log-sum-exp of every
    query's scores too (the runner then returns ``(out, lse)``).
    """

    pattern: Pattern
    layout: Grid | Points
    device: torch.device
    dtype: torch.dtype
    heads: int
    head_dim: int
    needs_grad: bool
    lse: bool = False

    def with_pattern(self, pattern: Pattern, heads: int) -> Call:
        """The same call for one head group of a ``HeadSplit``."""
        return dataclasses.replace(self, pattern=pattern, heads=heads)

    @property
    def on_grid(self) -> bool:
        return isinstance(self.layout, Grid)


Runner = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Call, float, tuple], torch.Tensor]


@dataclass(frozen=True)
class Backend:
    """A way to compute attention. ``supports(call)`` and ``declines(call)`` return None or
    a reason phrased to follow the backend's name ("native is inference-only ...");
    ``run(q, k, v, call, scale, tile)`` returns [B, heads, N, head_dim_v] (and the
    log-sum-exp [B, heads, N] as a second value when ``call.lse``). ``head_split``: the
    backend takes ``HeadSplit`` patterns whole (head-dependent masks); ``returns_lse``: it
    can return the log-sum-exp."""

    name: str
    summary: str
    supports: Callable[[Call], str | None]
    run: Runner
    declines: Callable[[Call], str | None] = lambda call: None
    head_split: bool = False
    returns_lse: bool = False

    def verdict(self, call: Call) -> str | None:
        """``supports(call)``, and for a call that wants the log-sum-exp, whether this
        backend returns one: None if it runs ``call`` exactly, else the reason."""
        if call.lse and not self.returns_lse:
            return "does not return the log-sum-exp (return_lse=True, extra keys)"
        return self.supports(call)


# -- capability checks ----------------------------------------------------------------
def _grid_mask(call: Call) -> str | None:
    if not call.on_grid:
        return f"works on grids; {call.pattern!r} on {call.layout!r} takes 'auto' (groups / scenes)"
    if isinstance(call.pattern, SortedGroups):
        return f"does not run {call.pattern!r}, which sorts tokens into groups: 'auto' does"
    if not call.pattern.is_mask:
        return (
            f"needs a mask pattern; {call.pattern!r} is not a mask pattern: use backend 'auto'"
            " or 'reference'"
        )
    return None


def _separable(call: Call, local: bool) -> str | None:
    if (reason := _grid_mask(call)) is not None:
        return reason
    if not isinstance(call.pattern, Separable):
        return (
            f"takes separable patterns (windows, neighborhoods, stripes, axial); {call.pattern!r}"
            " is not one: use 'auto' or 'blocksparse'"
        )
    if local and not all(r.local for r in call.pattern.axis_rules(call.layout)):
        return (
            f"needs a separable pattern with local axes (windows, stripes, neighborhoods);"
            f" {call.pattern!r} is not one: use 'auto' or 'blocksparse'"
        )
    return None


def _keyset_supports(call: Call) -> str | None:
    if call.pattern.is_mask or isinstance(call.pattern, HeadSplit):
        return "runs patterns over new keys (pooled, linear, routing, summary)"
    return None


def _sdpa_supports(call: Call) -> str | None:
    if (reason := _separable(call, local=False)) is not None:
        return reason
    if not all(isinstance(r, AllRule) for r in call.pattern.axis_rules(call.layout)):
        return "runs full attention only"
    return None


def _grouped(call: Call) -> bool:
    return not call.on_grid or isinstance(call.pattern, SortedGroups)


def group_ids(pattern: Pattern, layout: Grid | Points) -> torch.Tensor | None:
    """``pattern.group_ids`` of ``layout`` as points (given for ``FixedPoints``), cached
    for the last few (pattern, layout) pairs (a ``Points`` layout is hashed by identity)."""
    if isinstance(layout, FixedPoints):
        return layout.group_ids_of(pattern)
    return _group_ids(pattern, layout)


@functools.lru_cache(maxsize=8)
def _group_ids(pattern: Pattern, layout: Grid | Points) -> torch.Tensor | None:
    return pattern.group_ids(as_points(layout))


def _native_supports(call: Call) -> str | None:
    if _grouped(call):
        if (reason := _groups_supports(call)) is not None:
            return reason
    elif (reason := _separable(call, local=False)) is not None:
        return reason
    reason = native_kernels.native_unavailable(call.device, call.dtype)
    if reason is not None:
        return reason
    plan = _native_plan(call)
    return plan if isinstance(plan, str) else None


def _native_plan(call: Call):
    if _grouped(call):
        return native_kernels.points_plan(group_ids(call.pattern, call.layout), call.dtype)
    return native_kernels.native_plan(
        tuple(call.pattern.axis_rules(call.layout)), call.layout.shape, call.dtype
    )


def _native_declines(call: Call) -> str | None:
    if _grouped(call):
        return None
    rules = call.pattern.axis_rules(call.layout)
    if all(isinstance(r, AllRule) for r in rules) and not call.lse:
        return "leaves full attention to SDPA"
    return native_kernels.native_declines(_native_plan(call))


def _groups_supports(call: Call) -> str | None:
    if call.on_grid and not isinstance(call.pattern, SortedGroups):
        return "runs patterns on points (and sorted groups on grids)"
    if not call.pattern.is_mask:
        return f"needs a mask pattern; {call.pattern!r} is not one"
    if group_ids(call.pattern, call.layout) is None:
        return f"needs a partition into groups; {call.pattern!r} is not one"
    return None


def _scenes_supports(call: Call) -> str | None:
    if call.on_grid:
        return "runs mask patterns on points, scene by scene"
    if not call.pattern.is_mask:
        return f"needs a mask pattern; {call.pattern!r} is not one"
    return None


def _flex_supports(call: Call) -> str | None:
    if not call.on_grid or not call.pattern.is_mask:
        return _grid_mask(call)
    return flex_unavailable(call.pattern, call.device, call.dtype, call.needs_grad)


def _natten_supports(call: Call) -> str | None:
    if (reason := _grid_mask(call)) is not None:
        return reason
    return natten_unavailable(call.pattern, call.layout, call.device, call.dtype, call.head_dim)


def _natten_declines(call: Call) -> str | None:
    if isinstance(call.pattern, Window):
        return "leaves whole windows to the tiled path (flash SDPA per window, no mask)"
    return None


def _flex_declines(call: Call) -> str | None:
    if isinstance(call.pattern, Separable) and all(
        isinstance(r, AllRule | PartitionRule) for r in call.pattern.axis_rules(call.layout)
    ):
        return "leaves partitions into whole tiles to the tiled path (SDPA per tile, no mask)"
    return None


def _reference_supports(call: Call) -> str | None:
    if isinstance(call.pattern, HeadSplit) and not call.pattern.is_mask:
        return "runs a head split with parts over new keys one head group at a time"
    if call.lse and not call.pattern.is_mask:
        return f"returns the log-sum-exp of mask patterns only; {call.pattern!r} is not one"
    return None


# -- runners -----------------------------------------------------------------------------
def _run_keyset(q, k, v, call: Call, scale: float, tile) -> torch.Tensor:
    return keyset_attention(call.pattern, q, k, v, call.layout, scale)


def _run_sdpa(q, k, v, call: Call, scale: float, tile) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def _run_native(q, k, v, call: Call, scale: float, tile):
    if _grouped(call):
        groups = group_ids(call.pattern, call.layout)
        out, lse = native_kernels.native_group_attention(q, k, v, groups, scale,
                                                         call.needs_grad, call.lse)  # fmt: skip
    else:
        rules = call.pattern.axis_rules(call.layout)
        out, lse = native_kernels.native_attention(q, k, v, rules, call.layout.shape, scale,
                                                   call.needs_grad, call.lse)  # fmt: skip
    return (out, lse) if call.lse else out


def _run_groups(q, k, v, call: Call, scale: float, tile) -> torch.Tensor:
    groups = group_ids(call.pattern, call.layout)
    return group_attention(q, k, v, groups.to(q.device), scale)


def _run_scenes(q, k, v, call: Call, scale: float, tile) -> torch.Tensor:
    return scene_attention(q, k, v, call.pattern, call.layout, scale)


def _run_tiled(q, k, v, call: Call, scale: float, tile) -> torch.Tensor:
    rules = tuple(call.pattern.axis_rules(call.layout))
    plan = local_plan(rules, call.layout.shape, tile, q.device)
    return tiled_attention(q, k, v, plan, scale, call.layout.shape)


def _run_blocksparse(q, k, v, call: Call, scale: float, tile):
    return block_sparse_attention(q, k, v, call.pattern, call.layout, tile, scale, call.lse)


def _run_flex(q, k, v, call: Call, scale: float, tile) -> torch.Tensor:
    return flex_attention(q, k, v, call.pattern, call.layout, scale)


def _run_natten(q, k, v, call: Call, scale: float, tile):
    return natten_attention(q, k, v, call.pattern, call.layout, scale, call.lse)


def _run_reference(q, k, v, call: Call, scale: float, tile):
    if isinstance(call.pattern, KeySetPattern):
        return call.pattern.reference(q, k, v, call.layout, scale)
    if call.lse:
        return reference_attention_lse(q, k, v, call.pattern, call.layout, scale)
    return reference_attention(q, k, v, call.pattern, call.layout, scale)


_ALL = (
    Backend(
        "keyset",
        "fast paths of patterns over new keys (pooled, linear, routing, summary)",
        _keyset_supports,
        _run_keyset,
    ),
    Backend(
        "sdpa", "full attention: PyTorch's scaled_dot_product_attention", _sdpa_supports, _run_sdpa
    ),
    Backend(
        "native",
        "ndformer's compiled CPU kernels (float32 / float64, forward and backward) for"
        " separable patterns on grids and same-group patterns on points",
        _native_supports,
        _run_native,
        declines=_native_declines,
        returns_lse=True,
    ),
    Backend(
        "groups",
        "same-group patterns on points: groups padded together through batched SDPA",
        _groups_supports,
        _run_groups,
    ),
    Backend(
        "scenes",
        "other mask patterns on points, scene by scene under their mask rows",
        _scenes_supports,
        _run_scenes,
    ),
    Backend(
        "tiled",
        "query tiles and their exact key halos through batched SDPA",
        lambda call: _separable(call, local=True),
        _run_tiled,
    ),
    Backend(
        "natten",
        "NATTEN's fused CUDA kernels (when installed) for neighborhoods and whole windows",
        _natten_supports,
        _run_natten,
        declines=_natten_declines,
        returns_lse=True,
    ),
    Backend(
        "flex",
        "PyTorch's compiled FlexAttention with the pattern as its mask function",
        _flex_supports,
        _run_flex,
        declines=_flex_declines,
        head_split=True,
    ),
    Backend(
        "blocksparse",
        "any mask pattern: N-D box tiles, online softmax over the tile pairs it touches",
        lambda call: _grid_mask(call),
        _run_blocksparse,
        head_split=True,
        returns_lse=True,
    ),
    Backend(
        "reference",
        "the definition: dense masked SDPA (N x N memory), or a key-set pattern's reference",
        _reference_supports,
        _run_reference,
        head_split=True,
        returns_lse=True,
    ),
)
BACKENDS: dict[str, Backend] = {b.name: b for b in _ALL}

#: Names ``attend(backend=...)`` accepts.
NAMES: tuple[str, ...] = ("auto", *BACKENDS)
