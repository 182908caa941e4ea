"""Query tiles and their exact key halos, for the tiled-SDPA kernel.

Per axis, a rule's ``query_groups`` cut the axis into query tiles (a window, a
run of ``tile`` positions of one dilation group, the whole axis); each tile's
keys are the exact union of its queries' keys. Tiles are grouped into classes
of equal query count, so that border windows of shifted or non-dividing
windows are attended at their own size instead of being padded to the full
one. The N-D plan has one part per combination of per-axis classes; a part
with full tiles needs no mask and is plain SDPA.
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass

import torch

from .._cache import plan_cache
from ..patterns.axis import AxisRule, relation
from .geometry import axis_outer, flat_index, row_of_token

#: Beyond this many per-axis class combinations, classes are merged (padded) instead.
MAX_PARTS = 32


@dataclass(frozen=True)
class AxisTiling:
    """``num_tiles`` query tiles of ``T`` slots on one axis, each with ``H`` key slots.

    ``queries [num_tiles, T]`` and ``keys [num_tiles, H]`` are coordinates (padding
    slots repeat a real coordinate and are flagged False in ``query_real`` /
    masked in ``allowed``); ``allowed [num_tiles, T, H]`` is the rule on the tile.
    """

    queries: torch.Tensor
    query_real: torch.Tensor
    keys: torch.Tensor
    allowed: torch.Tensor


def _pad(values: torch.Tensor, size: int) -> torch.Tensor:
    return torch.cat([values, values[-1:].expand(size - len(values))])


def _tiling(groups: list[torch.Tensor], key_sets: list[torch.Tensor], full: torch.Tensor):
    t = max(len(g) for g in groups)
    h = max(len(k) for k in key_sets)
    queries = torch.stack([_pad(g, t) for g in groups])
    keys = torch.stack([_pad(k, h) for k in key_sets])
    query_real = torch.stack([torch.arange(t) < len(g) for g in groups])
    key_real = torch.stack([torch.arange(h) < len(k) for k in key_sets])
    allowed = full[queries[:, :, None], keys[:, None, :]] & key_real[:, None, :]
    return AxisTiling(queries, query_real, keys, allowed)


@plan_cache(512)
def axis_tilings(rule: AxisRule, length: int, tile: int, split: bool) -> tuple[AxisTiling, ...]:
    """The axis' tiles, one ``AxisTiling`` per query-count class (or one padded if not split)."""
    full = relation(rule, length)
    groups = rule.query_groups(length, tile)
    key_sets = [torch.nonzero(full[g].any(0)).flatten() for g in groups]
    if not split:
        return (_tiling(groups, key_sets, full),)
    sizes = sorted({len(g) for g in groups}, reverse=True)
    return tuple(
        _tiling(
            [g for g in groups if len(g) == size],
            [k for g, k in zip(groups, key_sets, strict=True) if len(g) == size],
            full,
        )
        for size in sizes
    )


@dataclass(frozen=True)
class LocalPart:
    """One batched attention call: ``num_tiles`` tiles of ``tile_tokens`` queries and
    ``halo_tokens`` keys; ``query_index`` / ``key_index`` gather them, ``mask`` is
    [num_tiles, tile_tokens, halo_tokens] or ``None`` when every pair is allowed.
    """

    query_index: torch.Tensor
    key_index: torch.Tensor
    mask: torch.Tensor | None
    num_tiles: int
    tile_tokens: int
    halo_tokens: int
    #: Per axis ``(start, tile_step, slot_step, tiles, slots)`` when the queries (keys)
    #: of this part are ``start + t * tile_step + s * slot_step`` on every axis: then a
    #: strided view and one copy gather them, faster than ``query_index`` (``key_index``).
    query_affine: tuple[tuple[int, int, int, int, int], ...] | None = None
    key_affine: tuple[tuple[int, int, int, int, int], ...] | None = None


@dataclass(frozen=True)
class LocalPlan:
    """The parts, and ``output_index [N]``: each token's row in the parts' concatenated output.

    ``blocks`` is set when the tiles partition the grid regularly (one unmasked part whose
    tiles are their own keys, e.g. windows that divide the grid): per axis
    ``(strided, tiles, tile_length)``, the axis of length tiles * tile_length seen as
    [tiles, tile_length] (contiguous runs) or, if ``strided``, as [tile_length, tiles]
    (every tiles-th position). Tokens are then reordered by views and one strided copy
    instead of index gathers.
    """

    parts: tuple[LocalPart, ...]
    output_index: torch.Tensor
    blocks: tuple[tuple[bool, int, int], ...] | None = None


def _regular(axis: AxisTiling, length: int) -> tuple[bool, int, int] | None:
    """``(strided, tiles, tile_length)`` if the axis' tiles are their own keys and split it
    into contiguous runs or into residue classes, else None."""
    tiles, size = axis.queries.shape
    if tiles * size != length or axis.keys.shape != axis.queries.shape:
        return None
    if not (bool(axis.allowed.all()) and torch.equal(axis.keys, axis.queries)):
        return None
    positions = torch.arange(length)
    if torch.equal(axis.queries, positions.view(tiles, size)):
        return (False, tiles, size)
    if torch.equal(axis.queries, positions.view(size, tiles).T):
        return (True, tiles, size)
    return None


def _affine(coords: torch.Tensor) -> tuple[int, int, int, int, int] | None:
    """``(start, tile_step, slot_step, tiles, slots)`` if ``coords [tiles, slots]`` is
    ``start + t * tile_step + s * slot_step``, else None."""
    tiles, slots = coords.shape
    start = int(coords[0, 0])
    tile_step = int(coords[1, 0] - start) if tiles > 1 else 0
    slot_step = int(coords[0, 1] - start) if slots > 1 else 0
    if tile_step < 0 or slot_step < 0:
        return None
    t = torch.arange(tiles)[:, None]
    s = torch.arange(slots)[None, :]
    if not torch.equal(coords, start + t * tile_step + s * slot_step):
        return None
    return (start, tile_step, slot_step, tiles, slots)


def _all_affine(per_axis: list[torch.Tensor]) -> tuple | None:
    found = tuple(_affine(c) for c in per_axis)
    return None if None in found else found


def _part(combo: tuple[AxisTiling, ...], shape: tuple[int, ...], device) -> LocalPart:
    """One batched call for a combination of per-axis tile classes."""
    mask = axis_outer([a.allowed for a in combo], operator.and_)
    return LocalPart(
        query_index=flat_index([a.queries for a in combo], shape).flatten().to(device),
        key_index=flat_index([a.keys for a in combo], shape).flatten().to(device),
        mask=None if bool(mask.all()) else mask.to(device),
        num_tiles=mask.shape[0],
        tile_tokens=mask.shape[1],
        halo_tokens=mask.shape[2],
        query_affine=_all_affine([a.queries for a in combo]),
        key_affine=_all_affine([a.keys for a in combo]),
    )


@plan_cache(16)  # a plan's masks hold O(N * halo) booleans: keep few
def local_plan(
    rules: tuple[AxisRule, ...],
    shape: tuple[int, ...],
    tile: tuple[int, ...],
    device: torch.device,
) -> LocalPlan:
    per_axis = [axis_tilings(r, n, t, True) for r, n, t in zip(rules, shape, tile, strict=True)]
    if math.prod(len(classes) for classes in per_axis) > MAX_PARTS:
        per_axis = [
            axis_tilings(r, n, t, False) for r, n, t in zip(rules, shape, tile, strict=True)
        ]
    combos = list(itertools.product(*per_axis))
    parts = tuple(_part(c, shape, device) for c in combos)
    real = torch.cat(
        [axis_outer([a.query_real for a in c], operator.and_).flatten() for c in combos]
    )
    # Every token is the real query of exactly one slot of the concatenated parts.
    query_index = torch.cat([p.query_index for p in parts])
    blocks = None
    if len(combos) == 1:
        regular = [_regular(a, n) for a, n in zip(combos[0], shape, strict=True)]
        blocks = None if None in regular else tuple(regular)
    return LocalPlan(parts, row_of_token(query_index, real.to(device), math.prod(shape)), blocks)
