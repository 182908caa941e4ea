"""Tiled SDPA: query tiles attend to their exact key halos, batched over tiles.

Covers every separable pattern whose per-axis rules are local (windows, stripes,
neighborhoods, whole axes). Per axis, a rule's ``query_groups`` cut the axis into query
tiles (a window, a run of ``tile`` positions of one dilation group, the whole axis);
each tile's keys are the exact union of its queries' keys. Tiles are grouped into
classes of equal query count, so that border windows of shifted or non-dividing windows
are attended at their own size instead of being padded to the full one. The N-D plan
(``local_plan``) has one part per combination of per-axis classes; a part with full
tiles needs no mask and is plain SDPA. ``tiled_attention`` gathers tokens into
[tiles, tile_tokens] queries and [tiles, halo_tokens] keys/values, runs one batched
attention call per part and gathers rows back. Memory is O(N * halo_tokens).
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._cache import plan_cache
from .._index import axis_outer, flat_index, row_major_strides
from ..patterns.axis import AxisRule, relation
from .geometry import row_of_token

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


#: Score elements (rows x tile tokens x halo tokens x tiles) per batched call.
SCORES_PER_CHUNK = 1 << 20


def masked_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v for rows with at least one allowed key.

    On CPU this ran about twice as fast as SDPA with a boolean mask for tile-sized
    problems when it was written (torch 2.13, 2-core x86: [4, 256, 64, 196] scores),
    and autograd keeps only the probabilities.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).masked_fill_(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _block_order(blocks: tuple[tuple[bool, int, int], ...]) -> tuple[list[int], list[int]]:
    """The grid viewed with two dims per axis (as ``blocks`` says), and the permutation of
    those dims that puts every axis' tile dim first, then every in-tile dim."""
    dims, tile_dims, inner_dims = [], [], []
    for a, (strided, tiles, size) in enumerate(blocks):
        dims += [size, tiles] if strided else [tiles, size]
        tile_dims.append(2 * a + (1 if strided else 0))
        inner_dims.append(2 * a + (0 if strided else 1))
    return dims, tile_dims + inner_dims


def block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocks: tuple[tuple[bool, int, int], ...],
    scale: float | None,
) -> torch.Tensor:
    """Attention within the tiles of a regular partition (``LocalPlan.blocks``): q, k
    [B, heads, N, E], v [B, heads, N, Ev] -> [B, heads, N, Ev].

    Each tensor is reordered to [B * heads, tiles, tile_tokens, E] by a view and one
    strided copy (several times faster than a row gather), attended by one batched SDPA
    without a mask, and reordered back the same way.
    """
    batch, heads, n = q.shape[:3]
    dims, order = _block_order(blocks)
    tiles = math.prod(b[1] for b in blocks)
    lead = [0, *(d + 1 for d in order)]  # dims of [rows, *grid dims, E]

    def to_tiles(x: torch.Tensor) -> torch.Tensor:
        grid = x.reshape(batch * heads, *dims, x.shape[-1])
        return grid.permute(*lead, len(dims) + 1).reshape(batch * heads, tiles, -1, x.shape[-1])

    out = F.scaled_dot_product_attention(to_tiles(q), to_tiles(k), to_tiles(v), scale=scale)
    sizes = [dims[d] for d in order]
    back = [0] * len(lead)
    for position, dim in enumerate(lead):
        back[dim] = position
    grid = out.reshape(batch * heads, *sizes, v.shape[-1]).permute(*back, len(dims) + 1)
    return grid.reshape(batch, heads, n, v.shape[-1])


def strided_tiles(
    x: torch.Tensor, affine: tuple[tuple[int, int, int, int, int], ...], shape: tuple[int, ...]
) -> torch.Tensor:
    """x [rows, N, E] (row-major grid tokens) -> [rows, tiles, slots, E]: the tokens at
    ``start + t * tile_step + s * slot_step`` per axis, through one strided view and a copy."""
    x = x.contiguous()
    rows, n, e = x.shape
    token_strides = row_major_strides(shape)
    sizes = [rows, *(a[3] for a in affine), *(a[4] for a in affine), e]
    strides = [
        n * e,
        *(a[1] * st * e for a, st in zip(affine, token_strides, strict=True)),
        *(a[2] * st * e for a, st in zip(affine, token_strides, strict=True)),
        1,
    ]
    offset = x.storage_offset() + e * sum(
        a[0] * st for a, st in zip(affine, token_strides, strict=True)
    )
    tiles = math.prod(a[3] for a in affine)
    return x.as_strided(sizes, strides, offset).reshape(rows, tiles, -1, e)


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: LocalPlan,
    scale: float | None,
    shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """q, k: [B, heads, N, E]; v: [B, heads, N, Ev] -> [B, heads, N, Ev].

    Masked tiles are processed in chunks of at most ``SCORES_PER_CHUNK`` score
    elements, which bounds the temporary memory of inference and keeps it in the
    allocator's reuse range instead of mapping fresh pages on every call. With the
    grid ``shape``, parts whose tiles are affine on every axis are gathered by strided
    views (whole, then sliced per chunk) instead of row gathers.
    """
    if plan.blocks is not None:
        return block_attention(q, k, v, plan.blocks, scale)
    batch, heads, n = q.shape[:3]
    rows = batch * heads
    # [rows, N, d] views: index_select along a middle axis of a 4-D tensor measured
    # several times slower than along axis 1 of the 3-D view.
    q, k, v = (x.reshape(rows, n, x.shape[-1]) for x in (q, k, v))
    outputs = []
    for part in plan.parts:
        t, h = part.tile_tokens, part.halo_tokens
        # Unmasked parts go to SDPA's own memory-efficient kernels in one call.
        step = part.num_tiles if part.mask is None else max(1, SCORES_PER_CHUNK // (rows * t * h))
        whole = {}
        if shape is not None and part.query_affine is not None:
            whole["q"] = strided_tiles(q, part.query_affine, shape)
        if shape is not None and part.key_affine is not None:
            whole["k"] = strided_tiles(k, part.key_affine, shape)
            whole["v"] = strided_tiles(v, part.key_affine, shape)
        for start in range(0, part.num_tiles, step):
            stop = min(start + step, part.num_tiles)

            def gather(name, x, index, size, start=start, stop=stop, whole=whole):
                if name in whole:
                    return whole[name][:, start:stop]
                index = index[start * size : stop * size]
                return x.index_select(1, index).view(rows, stop - start, size, x.shape[-1])

            args = (
                gather("q", q, part.query_index, t),
                gather("k", k, part.key_index, h),
                gather("v", v, part.key_index, h),
            )
            mask = None if part.mask is None else part.mask[start:stop]
            if mask is not None and q.device.type == "cpu":
                out = masked_softmax_attention(*args, mask, scale)
            else:
                out = F.scaled_dot_product_attention(*args, attn_mask=mask, scale=scale)
            outputs.append(out.reshape(rows, -1, v.shape[-1]))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return out.index_select(1, plan.output_index).view(batch, heads, n, v.shape[-1])
