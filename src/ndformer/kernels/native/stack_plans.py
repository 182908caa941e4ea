"""The stacked kernel's plan (``Stack`` in cpp/stack.h): a lane plan's tiles regrouped.

Neighborhood tiles whose keys are one vector load per slot (inside the grid and at
clamped borders) are stacked three at a time along the grid, where they read mostly the
same key columns; each group gets a list of *blocks* (runs of key columns read by a run
of its tiles), shared by the groups whose tiles read the same relative columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..._cache import plan_cache
from ...patterns.axis import AxisRule
from . import lane_plans
from .lane_plans import PERM, SHIFT, LanePlan, lane_plan

#: Duplicate-lane layers of a fold (``Stack::FOLDS``; checked against the library at
#: load). The tiles per group (``Stack::R``) and the columns per block
#: (``Stack::COLUMNS``) are the library's, given to ``stack_plan``.
STACK_FOLDS = 8
#: The stacked kernel transposes K and V in chunks of about this many key tokens (more
#: for a group with a long reach: at least REACH times a group's), so that they, and the
#: backward's dK^T, dV^T, stay in cache on large grids. 4096 tokens: with 2 threads the
#: backward of neighborhood(7) at 128x128 ran 1.5-1.7x faster than with whole rows
#: (32768), forward 1.2-1.6x (interleaved A/B runs, 2-core AMD EPYC).
STACK_SPAN = 1 << 12
REACH = 2.0


@dataclass(frozen=True)
class StackPlan:
    """The lane plan's tiles regrouped for the stacked kernel (``Stack`` in cpp/stack.h).

    A tile qualifies when its first m lanes are consecutive tokens (the rest padding) and
    every slot's keys are ``column + idx[l]`` for one lane index ``idx`` (the identity
    inside the grid, a clamp at a border). Qualifying tiles with the same ``idx``, m and
    position along the last axis are stacked in groups of up to ``stack`` along the other
    axes, where they share most key columns.

    tok0 [G, stack] int32 (each tile's first token, -1 = none), lanes [G] int32 (m), sig
    [G] int32 (the group's block list), column [G] int64 (added to its blocks' columns),
    perm [G] int32 (row of idx [P, VL], -1 = identity), first [S + 1] int32 (block range
    of each block list) and blocks [NB, 4 + stack] int32: column, first tile, tiles, columns
    (<= ``columns``) and each tile's slot of the first column. Groups are in token order and
    cut into chunks
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
    #: [P, STACK_FOLDS + 1, VL] int32 and [P] int32: how the backward adds a vector of
    #: row idx back onto its keys (``fold_lanes``).
    fold: np.ndarray
    shift: np.ndarray
    first: np.ndarray
    blocks: np.ndarray
    chunks: np.ndarray
    rest: np.ndarray

    @property
    def groups(self) -> int:
        return self.tok0.shape[0]


def _tile_keys(plan: LanePlan, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[t, S, VL] key token of every lane and slot of these (SHIFT / PERM only) tiles, and
    [t, S, VL] whether a PERM slot gives the lane no key (offset -1: masked or padding)."""
    vl = plan.lanes
    kind, base = plan.kind[tiles], plan.base[tiles].astype(np.int64)
    perm = kind == PERM
    keys = base[..., None] + np.arange(vl)
    mb = np.where(perm, base, 0)
    off = plan.offsets[mb]
    keys = np.where(perm[..., None], plan.start[mb][..., None] + off, keys)
    return keys, perm[..., None] & (off < 0)


def _blocks(rel: np.ndarray, columns: int, stack: int) -> list[list[int]]:
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
            blocks += [[c, t, 1, 1, s, *[0] * (stack - 1)] for t, s in use]
            open_block = None
            continue
        slots = [s for _, s in use]
        b = open_block
        if (
            b is not None
            and b[0] + b[3] == c
            and b[1] == ts[0]
            and b[2] == len(ts)
            and b[3] < columns
            and all(b[4 + i] + b[3] == s for i, s in enumerate(slots))
        ):
            b[3] += 1
            continue
        open_block = [c, ts[0], len(ts), 1, *slots, *[0] * (stack - len(ts))]
        blocks.append(open_block)
    return blocks


def fold_lanes(idx: np.ndarray, real: int) -> tuple[int, np.ndarray] | None:
    """How the backward adds a vector ``x`` whose lane l belongs to key column ``idx[l]``
    (relative to a block column) back onto those keys with one vector add at column
    ``shift``: (shift <= 0, sources [STACK_FOLDS + 1, VL]), lane p of the added vector being
    the sum of x over ``sources[:, p]`` (-1 = none; layer 0 is x's own lane p where it owns
    that key). Lanes ``>= real`` are idle (zero) and may be dropped. The shift with the
    fewest layers wins; None if no shift needs at most ``STACK_FOLDS`` extra layers."""
    vl = len(idx)
    best = None
    for shift in range(-(vl - 1), 1):
        target = idx - shift
        inside = (target >= 0) & (target < vl)
        if not inside[:real].all():
            continue
        sources = np.full((STACK_FOLDS + 1, vl), -1, np.int64)
        depth = np.zeros(vl, np.int64)
        own = inside & (target == np.arange(vl))
        sources[0, np.nonzero(own)[0]] = np.nonzero(own)[0]
        for lane in np.nonzero(inside & ~own)[0]:
            depth[target[lane]] += 1
            if depth[target[lane]] > STACK_FOLDS:
                break
            sources[depth[target[lane]], target[lane]] = lane
        else:
            if best is None or depth.max() < best[0]:
                best = (int(depth.max()), shift, sources)
    return None if best is None else (best[1], best[2].astype(np.int32))


def empty_stack(tiles: int, vl: int, stack: int = 1) -> StackPlan:
    """A stacked plan with no groups: all ``tiles`` left to the lane kernel."""
    return StackPlan(
        tok0=np.zeros((0, stack), np.int32),
        lanes=np.zeros(0, np.int32),
        sig=np.zeros(0, np.int32),
        column=np.zeros(0, np.int64),
        perm=np.zeros(0, np.int32),
        idx=np.zeros((1, vl), np.int32),
        fold=np.full((1, STACK_FOLDS + 1, vl), -1, np.int32),
        shift=np.zeros(1, np.int32),
        first=np.zeros(1, np.int32),
        blocks=np.zeros((1, 4 + stack), np.int32),
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
    step = max(1, lane_plans.PLAN_CHUNK // (vl * plan.slots))
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
def stack_plan(
    rules: tuple[AxisRule, ...], shape: tuple[int, ...], vl: int, columns: int, stack: int
) -> StackPlan | None:
    """The stacked regrouping of ``lane_plan(rules, shape, vl)`` (None without a plan):
    groups of up to ``stack`` tiles, blocks of at most ``columns`` key columns."""
    plan = lane_plan(rules, shape, vl)
    if plan is None:
        return None
    tiles, lanes, col, idx = _stackable(plan)
    lane = np.arange(vl)
    # lane indices whose backward cannot fold back onto their keys stay in the lane kernel
    rows, inverse = np.unique(idx, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    real = np.zeros(len(rows), np.int64)
    np.maximum.at(real, inverse, lanes)
    folds = [fold_lanes(r, m) for r, m in zip(rows, real, strict=True)]
    keep = np.array([f is not None for f in folds], bool)[inverse]
    tiles, lanes, col, idx = tiles[keep], lanes[keep], col[keep], idx[keep]
    if not len(tiles):
        return empty_stack(plan.tiles, vl, stack)
    # one row of ``table`` per distinct non-identity lane index; -1 = identity
    table, perm = np.unique(idx, axis=0, return_inverse=True)
    perm = perm.reshape(-1)
    identity = (table == lane).all(1)
    perm = np.where(identity[perm], -1, (np.cumsum(~identity) - 1)[perm])
    table = table[~identity] if (~identity).any() else np.zeros((1, vl), np.int64)
    row_of = {r.tobytes(): f for r, f in zip(rows, folds, strict=True)}
    fold = np.full((len(table), STACK_FOLDS + 1, vl), -1, np.int32)
    shift = np.zeros(len(table), np.int32)
    if (~identity).any():
        for i, r in enumerate(table):
            shift[i], fold[i] = row_of[r.tobytes()]
    # stack tiles with the same lane index and position along the last axis, in token order
    tok0 = plan.tokens[tiles, 0].astype(np.int64)
    x = tok0 % shape[-1]
    order = np.lexsort((tok0, lanes, x, perm))
    col, perm, tok0, x, lanes = col[order], perm[order], tok0[order], x[order], lanes[order]
    new_run = np.r_[True, (perm[1:] != perm[:-1]) | (x[1:] != x[:-1]) | (lanes[1:] != lanes[:-1])]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(len(tok0)), 0))
    pos = np.arange(len(tok0)) - run_start
    gid = np.cumsum(pos % stack == 0) - 1
    ngroups = int(gid[-1]) + 1
    g_tok0 = np.full((ngroups, stack), -1, np.int64)
    g_col = np.full((ngroups, stack, plan.slots), np.iinfo(np.int64).max)
    g_tok0[gid, pos % stack] = tok0
    g_col[gid, pos % stack] = col
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
            listed = _blocks(rel, columns, stack)
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
        fold=fold,
        shift=shift,
        first=np.asarray(first, np.int32),
        blocks=np.asarray(blocks, np.int32),
        chunks=_chunks(g_min, g_max + vl),
        rest=np.setdiff1d(np.arange(plan.tiles), tiles).astype(np.int32),
    )


def _chunks(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Consecutive groups (key columns [lo, hi) each) cut into chunks whose key columns
    span at most ``STACK_SPAN`` or ``REACH`` times a group's (so that a chunk's queries span at
    least about as much as its halo): [C, 4] first, end group, lo, hi."""
    limit = max(STACK_SPAN, int(REACH * int((hi - lo).max())))
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
