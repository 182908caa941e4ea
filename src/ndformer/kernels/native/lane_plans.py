"""Plans of the lane and shared-keys kernels: which keys each tile of queries reads
(see cpp/lanes.h, cpp/shared.h).

Both plans start from the pattern's per-axis rules: every axis gives each coordinate its
list of key coordinates, a query's keys are those lists crossed (its *slots*), and
queries are grouped by the rules' own query groups (whole windows; VL-long runs along the
last axis), crossed over axes, each group row-major and cut into tiles of VL lanes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..._cache import plan_cache
from ...patterns.axis import AllRule, AxisRule, PartitionRule, relation

#: Slot kinds of a lane plan (``enum`` in cpp/lanes.h; checked against the library at load).
SKIP, SHIFT, BCAST, PERM, GATHER = range(5)
#: Plans with more key slots per query than this are left to the tiled path.
MAX_SLOTS = 4096
#: Tiles classified per step while building a plan (bounds its temporary memory).
PLAN_CHUNK = 1 << 20
#: Largest plan (tiles x slots entries) built; beyond, the tiled path.
MAX_PLAN_ENTRIES = 1 << 24
#: Lane registers per tile of the shared-keys kernel (``Shared::GMAX`` in cpp/shared.h;
#: checked against the library at load).
SHARED_GROUP = 4


@dataclass(frozen=True)
class LanePlan:
    """Where every (query tile, key slot)'s keys lie; see cpp/lanes.h for the kinds.

    tokens [T, VL] int32 (query token per lane, -1 = padding), kind / base [T, S] int32,
    offsets [M, VL] int32 and start [M] int64 for the PERM / GATHER slots (base indexes
    them). ``gathered`` is the fraction of slots that need per-lane loads.
    """

    tokens: np.ndarray
    kind: np.ndarray
    base: np.ndarray
    offsets: np.ndarray
    start: np.ndarray
    lanes: int
    gathered: float

    @property
    def tiles(self) -> int:
        return self.tokens.shape[0]

    @property
    def slots(self) -> int:
        return self.kind.shape[1]


def _axis_keys(rule: AxisRule, length: int) -> np.ndarray:
    """[length, m]: each coordinate's allowed key coordinates, ascending, -1 padded."""
    rel = relation(rule, length).numpy()
    m = max(1, int(rel.sum(1).max()))
    order = np.argsort(~rel, axis=1, kind="stable")[:, :m]
    return np.where(np.take_along_axis(rel, order, 1), order, -1)


def _crossed_keys(
    keys: list[np.ndarray], coords: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """For queries at ``coords`` [..., ndim]: their key tokens [..., S] (row-major over the
    grid; slots ordered row-major over the per-axis key lists ``keys``, last axis fastest)
    and which slots hold a key (a short border window has fewer)."""
    counts = [k.shape[1] for k in keys]
    lead = coords.shape[:-1]
    token = np.zeros((*lead, math.prod(counts)), np.int64)
    valid = np.ones_like(token, dtype=bool)
    for a, n in enumerate(shape):
        view = [1] * len(shape)
        view[a] = counts[a]
        ka = keys[a][coords[..., a]].reshape(*lead, *view)
        ka = np.broadcast_to(ka, (*lead, *counts)).reshape(token.shape)
        valid &= ka >= 0
        token = token * n + np.maximum(ka, 0)
    return token, valid


def _query_tiles(
    rules: tuple[AxisRule, ...], shape: tuple[int, ...], vl: int
) -> tuple[np.ndarray, np.ndarray]:
    """[T, VL] query tokens: the rules' query groups (whole windows; VL-long runs along the
    last axis) crossed over axes, each group row-major and cut into VL lanes; and [G + 1]
    the first tile of every group (its tiles are consecutive)."""
    nd = len(shape)
    gid, pos, sizes = [], [], []
    for a, (rule, n) in enumerate(zip(rules, shape, strict=True)):
        groups = rule.query_groups(n, vl if a == nd - 1 else 1)
        g = np.empty(n, np.int64)
        p = np.empty(n, np.int64)
        for i, members in enumerate(groups):
            g[members.numpy()] = i
            p[members.numpy()] = np.arange(len(members))
        gid.append(g)
        pos.append(p)
        sizes.append(np.array([len(m) for m in groups], np.int64))
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    coords = coords.reshape(-1, nd)
    group = np.zeros(len(coords), np.int64)
    rank = np.zeros(len(coords), np.int64)
    total = np.ones(len(coords), np.int64)
    for a in range(nd):
        ga = gid[a][coords[:, a]]
        group = group * len(sizes[a]) + ga
        rank = rank * sizes[a][ga] + pos[a][coords[:, a]]
        total *= sizes[a][ga]
    order = np.lexsort((rank, group))
    group, rank, total = group[order], rank[order], total[order]
    first = np.r_[True, group[1:] != group[:-1]]
    per_group = -(-total[first] // vl)
    members = np.diff(np.r_[np.nonzero(first)[0], len(group)])
    offset = np.repeat(np.cumsum(per_group) - per_group, members)
    tiles = np.full((int(per_group.sum()), vl), -1, np.int64)
    tiles[offset + rank // vl, rank % vl] = order
    return tiles, np.r_[0, np.cumsum(per_group)]


@plan_cache(64)
def lane_plan(rules: tuple[AxisRule, ...], shape: tuple[int, ...], vl: int) -> LanePlan | None:
    """The lane plan of a separable pattern (its per-axis ``rules``) on a grid, or None when
    a query has more than ``MAX_SLOTS`` key slots or the plan would exceed
    ``MAX_PLAN_ENTRIES``."""
    keys = [_axis_keys(r, n) for r, n in zip(rules, shape, strict=True)]
    slots = math.prod(k.shape[1] for k in keys)
    if slots > MAX_SLOTS:
        return None
    tokens = _query_tiles(rules, shape, vl)[0]
    num_tiles = len(tokens)
    if num_tiles * slots > MAX_PLAN_ENTRIES:
        return None
    kind = np.empty((num_tiles, slots), np.int32)
    base = np.empty((num_tiles, slots), np.int32)
    offsets, start = [], []
    lane = np.arange(vl)
    step = max(1, PLAN_CHUNK // (vl * slots))
    for t0 in range(0, num_tiles, step):
        tok = tokens[t0 : t0 + step]
        t = len(tok)
        real = tok >= 0
        coords = np.stack(np.unravel_index(np.where(real, tok, 0), shape), -1)
        key, valid = _crossed_keys(keys, coords, shape)
        counted = valid & real[..., None]
        ignore = ~real[..., None]
        first = key[:, 0, :]
        full = (valid | ignore).all(1)
        shift = full & ((key == first[:, None] + lane[None, :, None]) | ignore).all(1)
        bcast = full & ((key == first[:, None]) | ignore).all(1)
        k = np.full((t, slots), GATHER, np.int32)
        k[shift] = SHIFT
        k[bcast] = BCAST
        k[~counted.any(1)] = SKIP
        b = first.astype(np.int32)
        mt, ms = np.nonzero(k == GATHER)
        if len(mt):
            mkeys, mok = key[mt, :, ms], counted[mt, :, ms]
            lo = np.where(mok, mkeys, np.iinfo(np.int64).max).min(1)
            hi = np.where(mok, mkeys, -1).max(1)
            k[mt[hi - lo < 2 * vl], ms[hi - lo < 2 * vl]] = PERM
            b[mt, ms] = sum(len(s) for s in start) + np.arange(len(mt))
            offsets.append(np.where(mok, mkeys - lo[:, None], -1).astype(np.int32))
            start.append(lo)
        kind[t0 : t0 + t] = k
        base[t0 : t0 + t] = b
    used = (kind != SKIP).sum()
    return LanePlan(
        tokens=np.ascontiguousarray(tokens, dtype=np.int32),
        kind=kind,
        base=base,
        offsets=np.concatenate(offsets) if offsets else np.zeros((1, vl), np.int32),
        start=np.concatenate(start).astype(np.int64) if start else np.zeros(1, np.int64),
        lanes=vl,
        gathered=float((kind == GATHER).sum() / max(1, used)),
    )


@dataclass(frozen=True)
class SharedPlan:
    """Query tiles whose lanes all share one key list (windows): tokens [T, 4 * VL] int32
    (up to 4 lane registers, -1 = padding), keys [T, S] int32 (the shared keys, -1
    padded), counts [T] int32, and first [G + 1] int32: the tiles of group g (whose
    queries are exactly its keys) are first[g] .. first[g + 1] - 1."""

    tokens: np.ndarray
    keys: np.ndarray
    counts: np.ndarray
    first: np.ndarray

    @property
    def groups(self) -> int:
        return len(self.first) - 1

    @property
    def tiles(self) -> int:
        return self.keys.shape[0]

    @property
    def slots(self) -> int:
        return self.keys.shape[1]


@plan_cache(64)
def shared_plan(rules: tuple[AxisRule, ...], shape: tuple[int, ...], vl: int) -> SharedPlan | None:
    """Tiles of up to 4 x VL queries that share their keys, for patterns whose every axis is
    a partition (windows, dilated / shifted windows, stripes' short axes) or whole (axial,
    stripes' long axis): the queries of one window have exactly its keys. None for other
    rules, more than ``MAX_SLOTS`` keys per query or a plan over ``MAX_PLAN_ENTRIES``."""
    if not all(isinstance(r, PartitionRule | AllRule) for r in rules):
        return None
    keys = [_axis_keys(r, n) for r, n in zip(rules, shape, strict=True)]
    slots = math.prod(k.shape[1] for k in keys)
    tokens, group_first = _query_tiles(rules, shape, SHARED_GROUP * vl)
    if slots > MAX_SLOTS or len(tokens) * slots > MAX_PLAN_ENTRIES:
        return None
    lead = np.stack(np.unravel_index(tokens[:, 0], shape), -1)  # lane 0 is always a query
    key, valid = _crossed_keys(keys, lead, shape)
    key = np.where(valid, key, -1)
    order = np.argsort(~valid, axis=1, kind="stable")  # a short window's keys first
    compact = np.take_along_axis(key, order, 1)
    number = valid.sum(1)
    return SharedPlan(
        tokens=np.ascontiguousarray(tokens, dtype=np.int32),
        keys=np.ascontiguousarray(compact[:, : max(1, int(number.max()))], dtype=np.int32),
        counts=number.astype(np.int32),
        first=group_first.astype(np.int32),
    )


def group_plan(groups: np.ndarray, vl: int) -> SharedPlan | None:
    """The shared-keys plan of "attend iff same group" for group ids [N] (points): each
    group's tokens (in token order) are its keys and, cut into tiles of up to
    ``SHARED_GROUP * VL``, its queries. None if a group has more than ``MAX_SLOTS`` tokens
    or the plan would exceed ``MAX_PLAN_ENTRIES``."""
    width = SHARED_GROUP * vl
    order = np.argsort(groups, kind="stable")
    _, counts = np.unique(groups[order], return_counts=True)
    if counts.max() > MAX_SLOTS:
        return None
    starts = np.cumsum(counts) - counts
    per_group = -(-counts // width)
    first = np.r_[0, np.cumsum(per_group)]
    tiles = int(first[-1])
    if tiles * int(counts.max()) > MAX_PLAN_ENTRIES:
        return None
    slots = int(counts.max())
    keys = np.full((len(counts), slots), -1, np.int64)
    member = np.repeat(np.arange(len(counts)), counts)
    rank = np.arange(len(order)) - starts[member]
    keys[member, rank] = order
    tile_group = np.repeat(np.arange(len(counts)), per_group)
    tokens = np.full((tiles, width), -1, np.int64)
    tile = first[member] + rank // width
    tokens[tile, rank % width] = order
    return SharedPlan(
        tokens=tokens.astype(np.int32),
        keys=np.ascontiguousarray(keys[tile_group], dtype=np.int32),
        counts=counts[tile_group].astype(np.int32),
        first=first.astype(np.int32),
    )
