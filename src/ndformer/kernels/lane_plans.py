"""Plans of the native kernels: which keys each tile of queries reads (see cpp/*.h).

Both plans start from the pattern's per-axis rules: every axis gives each coordinate its
list of key coordinates, a query's keys are those lists crossed (its *slots*), and
queries are grouped by the rules' own query groups (whole windows; VL-long runs along the
last axis), crossed over axes, each group row-major and cut into tiles of VL lanes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._cache import plan_cache
from ..patterns.axis import AllRule, AxisRule, PartitionRule, relation

#: Slot kinds of a lane plan (``enum`` in cpp/lanes.h).
SKIP, SHIFT, BCAST, PERM, GATHER = range(5)
#: Plans with more key slots per query than this are left to the tiled path.
MAX_SLOTS = 4096
#: Tiles classified per step while building a plan (bounds its temporary memory).
PLAN_CHUNK = 1 << 20
#: Largest plan (tiles x slots entries) built; beyond, the tiled path.
MAX_PLAN_ENTRIES = 1 << 24
#: Lane registers per tile of the shared-keys kernel (``Shared::GMAX`` in cpp/shared.h).
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


def _query_tiles(rules: tuple[AxisRule, ...], shape: tuple[int, ...], vl: int) -> np.ndarray:
    """[T, VL] query tokens: the rules' query groups (whole windows; VL-long runs along the
    last axis) crossed over axes, each group row-major and cut into VL lanes."""
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
    return tiles


@plan_cache(64)
def lane_plan(rules: tuple[AxisRule, ...], shape: tuple[int, ...], vl: int) -> LanePlan | None:
    """The lane plan of a separable pattern (its per-axis ``rules``) on a grid, or None when
    a query has more than ``MAX_SLOTS`` key slots or the plan would exceed
    ``MAX_PLAN_ENTRIES``."""
    keys = [_axis_keys(r, n) for r, n in zip(rules, shape, strict=True)]
    slots = math.prod(k.shape[1] for k in keys)
    if slots > MAX_SLOTS:
        return None
    tokens = _query_tiles(rules, shape, vl)
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
    padded) and counts [T] int32."""

    tokens: np.ndarray
    keys: np.ndarray
    counts: np.ndarray

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
    tokens = _query_tiles(rules, shape, SHARED_GROUP * vl)
    if slots > MAX_SLOTS or len(tokens) * slots > MAX_PLAN_ENTRIES:
        return None
    first = np.stack(np.unravel_index(tokens[:, 0], shape), -1)  # lane 0 is always a query
    key, valid = _crossed_keys(keys, first, shape)
    key = np.where(valid, key, -1)
    order = np.argsort(~valid, axis=1, kind="stable")  # a short window's keys first
    compact = np.take_along_axis(key, order, 1)
    number = valid.sum(1)
    return SharedPlan(
        tokens=np.ascontiguousarray(tokens, dtype=np.int32),
        keys=np.ascontiguousarray(compact[:, : max(1, int(number.max()))], dtype=np.int32),
        counts=number.astype(np.int32),
    )


#: Tiles per stacked group and fields per block (``Stack::R``, ``Stack::FIELDS``).
STACK, STACK_FIELDS, STACK_COLUMNS = 3, 7, 8
#: The stacked kernel transposes K and V in chunks of about this many key tokens (more
#: for a group with a long reach), so that they stay in cache on large grids.
STACK_SPAN = 1 << 15


@dataclass(frozen=True)
class StackPlan:
    """The lane plan's tiles regrouped for the stacked kernel (``Stack`` in cpp/stack.h).

    A tile qualifies when its first m lanes are consecutive tokens (the rest padding) and
    every slot's keys are ``column + idx[l]`` for one lane index ``idx`` (the identity
    inside the grid, a clamp at a border). Qualifying tiles with the same ``idx``, m and
    position along the last axis are stacked in groups of up to ``STACK`` along the other
    axes, where they share most key columns. tok0 [G, STACK] int32 (each tile's first
    token, -1 = none), lanes [G] int32 (m), sig [G] int32
    (the group's block list), column [G] int64 (added to its blocks' columns), perm [G]
    int32 (row of idx [P, VL], -1 = identity), first [S + 1] int32 (block range of each
    block list) and blocks [NB, 7] int32: column, first tile, tiles, columns (<= 8) and
    each tile's slot of the first column. Groups are in token order and cut into chunks
    [C, 4] int64: first group, end group, first key token, end key token (the columns
    the chunk's groups read, VL past the last key included). ``rest`` [M] int32: the
    tiles left to the lane kernel.
    """

    tok0: np.ndarray
    lanes: np.ndarray
    sig: np.ndarray
    column: np.ndarray
    perm: np.ndarray
    idx: np.ndarray
    first: np.ndarray
    blocks: np.ndarray
    chunks: np.ndarray
    rest: np.ndarray

    @property
    def groups(self) -> int:
        return self.tok0.shape[0]


def _tile_keys(plan: LanePlan, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[t, S, VL] key token of every lane and slot of these (SHIFT / PERM only) tiles, and
    [t, S, VL] whether the lane has no key there (PERM offset -1; also padding lanes)."""
    vl = plan.lanes
    kind, base = plan.kind[tiles], plan.base[tiles].astype(np.int64)
    perm = kind == PERM
    keys = base[..., None] + np.arange(vl)
    mb = np.where(perm, base, 0)
    off = plan.offsets[mb]
    keys = np.where(perm[..., None], plan.start[mb][..., None] + off, keys)
    return keys, perm[..., None] & (off < 0)


def _blocks(rel: np.ndarray) -> list[list[int]]:
    """Blocks of one group whose tiles read key columns rel [nt, S] (see StackPlan)."""
    users: dict[int, list[tuple[int, int]]] = {}
    for t in range(rel.shape[0]):
        for s in range(rel.shape[1]):
            users.setdefault(int(rel[t, s]), []).append((t, s))
    blocks: list[list[int]] = []
    open_block: list[int] | None = None
    for c in sorted(users):
        use = users[c]
        ts = [t for t, _ in use]
        if ts != list(range(ts[0], ts[0] + len(ts))):  # not a run of tiles: one block each
            blocks += [[c, t, 1, 1, s, 0, 0] for t, s in use]
            open_block = None
            continue
        slots = [s for _, s in use]
        b = open_block
        if (
            b is not None
            and b[0] + b[3] == c
            and b[1] == ts[0]
            and b[2] == len(ts)
            and b[3] < STACK_COLUMNS
            and all(b[4 + i] + b[3] == s for i, s in enumerate(slots))
        ):
            b[3] += 1
            continue
        open_block = [c, ts[0], len(ts), 1, *slots, *[0] * (STACK - len(ts))]
        blocks.append(open_block)
    return blocks


def empty_stack(tiles: int, vl: int) -> StackPlan:
    """A stacked plan with no groups: all ``tiles`` left to the lane kernel."""
    return StackPlan(
        tok0=np.zeros((0, STACK), np.int32),
        lanes=np.zeros(0, np.int32),
        sig=np.zeros(0, np.int32),
        column=np.zeros(0, np.int64),
        perm=np.zeros(0, np.int32),
        idx=np.zeros((1, vl), np.int32),
        first=np.zeros(1, np.int32),
        blocks=np.zeros((1, STACK_FIELDS), np.int32),
        chunks=np.zeros((0, 4), np.int64),
        rest=np.arange(tiles, dtype=np.int32),
    )


def _stackable(plan: LanePlan) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The tiles that qualify for stacking (see StackPlan): their indices, real lanes m,
    key columns [t, S] and lane indices [t, VL] (lanes >= m: their own index)."""
    vl, lane = plan.lanes, np.arange(plan.lanes)
    tokens = plan.tokens.astype(np.int64)
    m = (tokens >= 0).sum(1)
    real = lane < m[:, None]
    ok = (tokens[:, 0] >= 0) & np.where(real, tokens == tokens[:, :1] + lane, tokens < 0).all(1)
    ok &= np.isin(plan.kind, (SHIFT, PERM)).all(1)
    cand = np.nonzero(ok)[0]
    out: list[list[np.ndarray]] = [[], [], [], []]
    step = max(1, PLAN_CHUNK // (vl * plan.slots))
    for i in range(0, len(cand), step):
        chunk = cand[i : i + step]
        keys, masked = _tile_keys(plan, chunk)
        r = real[chunk][:, None, :]
        col = np.where(r, keys, np.iinfo(np.int64).max).min(-1)
        d = np.where(r, keys - col[..., None], lane)
        uniform = (d == d[:, :1]).all((1, 2)) & (d.max((1, 2)) < vl) & ~(masked & r).any((1, 2))
        for acc, x in zip(out, (chunk, m[chunk], col, d[:, 0]), strict=True):
            acc.append(x[uniform])
    if not out[0]:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, plan.slots)), lane[:0]
    tiles, lanes, col, idx = (np.concatenate(x) for x in out)
    return tiles, lanes, col, idx


@plan_cache(64)
def stack_plan(rules: tuple[AxisRule, ...], shape: tuple[int, ...], vl: int) -> StackPlan | None:
    """The stacked regrouping of ``lane_plan(rules, shape, vl)`` (None without a plan)."""
    plan = lane_plan(rules, shape, vl)
    if plan is None:
        return None
    tiles, lanes, col, idx = _stackable(plan)
    if not len(tiles):
        return empty_stack(plan.tiles, vl)
    lane = np.arange(vl)
    # one row of ``table`` per distinct non-identity lane index; -1 = identity
    table, perm = np.unique(idx, axis=0, return_inverse=True)
    perm = perm.reshape(-1)
    identity = (table == lane).all(1)
    perm = np.where(identity[perm], -1, (np.cumsum(~identity) - 1)[perm])
    table = table[~identity] if (~identity).any() else np.zeros((1, vl), np.int64)
    # stack tiles with the same lane index and position along the last axis, in token order
    tok0 = plan.tokens[tiles, 0].astype(np.int64)
    x = tok0 % shape[-1]
    order = np.lexsort((tok0, lanes, x, perm))
    col, perm, tok0, x, lanes = col[order], perm[order], tok0[order], x[order], lanes[order]
    new_run = np.r_[True, (perm[1:] != perm[:-1]) | (x[1:] != x[:-1]) | (lanes[1:] != lanes[:-1])]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(len(tok0)), 0))
    pos = np.arange(len(tok0)) - run_start
    gid = np.cumsum(pos % STACK == 0) - 1
    ngroups = int(gid[-1]) + 1
    g_tok0 = np.full((ngroups, STACK), -1, np.int64)
    g_col = np.full((ngroups, STACK, plan.slots), np.iinfo(np.int64).max)
    g_tok0[gid, pos % STACK] = tok0
    g_col[gid, pos % STACK] = col
    g_perm, g_lanes = np.zeros(ngroups, np.int64), np.zeros(ngroups, np.int64)
    g_perm[gid], g_lanes[gid] = perm, lanes
    # groups in token order (a chunk of them reads a narrow band of key columns)
    by_token = np.argsort(g_tok0[:, 0], kind="stable")
    g_tok0, g_col, g_perm, g_lanes = (x[by_token] for x in (g_tok0, g_col, g_perm, g_lanes))
    count = (g_tok0 >= 0).sum(1)
    g_min = g_col.reshape(ngroups, -1).min(1)
    g_max = np.where(g_col == np.iinfo(np.int64).max, -1, g_col).reshape(ngroups, -1).max(1)
    # groups whose tiles read the same columns relative to their first share one block list
    sigs: dict[bytes, int] = {}
    sig = np.zeros(ngroups, np.int32)
    first, blocks = [0], []
    for g in range(ngroups):
        rel = g_col[g, : count[g]] - g_min[g]
        key = rel.tobytes() + bytes([count[g]])
        if key not in sigs:
            sigs[key] = len(sigs)
            listed = _blocks(rel)
            blocks += listed
            first.append(first[-1] + len(listed))
        sig[g] = sigs[key]
    return StackPlan(
        tok0=g_tok0.astype(np.int32),
        lanes=g_lanes.astype(np.int32),
        sig=sig,
        column=g_min,
        perm=g_perm.astype(np.int32),
        idx=np.ascontiguousarray(table, dtype=np.int32),
        first=np.asarray(first, np.int32),
        blocks=np.asarray(blocks, np.int32),
        chunks=_chunks(g_min, g_max + vl),
        rest=np.setdiff1d(np.arange(plan.tiles), tiles).astype(np.int32),
    )


def _chunks(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Consecutive groups (key columns [lo, hi) each) cut into chunks whose key columns
    span at most ``STACK_SPAN`` or twice a group's (so that a chunk's queries span at
    least about as much as its halo): [C, 4] first, end group, lo, hi."""
    limit = max(STACK_SPAN, 2 * int((hi - lo).max()))
    chunks = []
    start, low, high = 0, int(lo[0]), int(hi[0])
    for g in range(1, len(lo)):
        a, b = min(low, int(lo[g])), max(high, int(hi[g]))
        if b - a > limit:
            chunks.append((start, g, low, high))
            start, a, b = g, int(lo[g]), int(hi[g])
        low, high = a, b
    chunks.append((start, len(lo), low, high))
    return np.asarray(chunks, np.int64)
