"""Native CPU kernels for local separable patterns (``lanes.cpp``), compiled once per machine.

Two kernels, both computing only the pairs the pattern allows:

- the *shared-keys* kernel, for patterns whose queries come in groups that share every
  key (windows — shifted, dilated, non-dividing —, stripes, axial): up to 4 SIMD
  registers of queries per tile (64 float32 queries) against the group's keys read in
  place as broadcasts, register-blocked 4 queries-registers x 4 keys (or value
  channels); no transposes, no masks;
- the *lane* kernel, for neighborhoods: VL queries (one register: 16 float32 or 8
  float64) walk their key lists together; a slot's VL keys are VL consecutive tokens (a
  vector load of K^T), one shared token, or a few tokens apart at borders (a permute).
  The tiled path computes whole key halos instead (4x the pairs of neighborhood(7)).

Plans (which keys each tile of queries reads) are built here from the pattern's per-axis
rules and cached per (rules, shape, lanes).

The source is compiled with the system's C++ compiler (``$CXX``, ``c++``, ``g++`` or
``clang++``; ``-O3 -march=native``) into ``$NDFORMER_CACHE/kernels`` (default
``~/.cache/ndformer/kernels``) on first use, keyed by the source, compiler and CPU, and
written atomically. Without a compiler, or with ``NDFORMER_NATIVE=0``, the kernels are
unavailable and ``attend`` uses the tiled path. They run forward passes without autograd
(inference); training uses the tiled path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._cache import cache_root, plan_cache
from ..patterns.axis import AllRule, AxisRule, NeighborhoodRule, PartitionRule, relation

SOURCE = Path(__file__).with_name("lanes.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")
SKIP, SHIFT, BCAST, PERM, GATHER = range(5)
DTYPES = {torch.float32: "f32", torch.float64: "f64"}
#: Plans with more key slots per query than this are left to the tiled path.
MAX_SLOTS = 4096
#: Tiles classified per step while building a plan (bounds its temporary memory).
PLAN_CHUNK = 1 << 22
#: Largest lane plan (tiles x slots entries, 8 bytes each) built; beyond, the tiled path.
MAX_PLAN_ENTRIES = 1 << 24
#: ``auto`` leaves a pattern to the tiled path when more than this fraction of its lane
#: plan's key slots need per-lane gathers (irregular key sets).
MAX_GATHERED = 0.25


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(lines)))


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@dataclass
class _Library:
    lib: ctypes.CDLL | None
    reason: str


@functools.cache
def _library() -> _Library:
    if os.environ.get("NDFORMER_NATIVE", "1") == "0":
        return _Library(None, "disabled by NDFORMER_NATIVE=0")
    compiler = _compiler()
    if compiler is None:
        return _Library(None, "no C++ compiler found (set CXX)")
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
        key = hashlib.sha256(
            "\n".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_signature()]).encode()
        ).hexdigest()[:16]
        target = cache_root() / "kernels" / f"lanes-{key}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            try:
                done = subprocess.run(
                    [compiler, *FLAGS, str(SOURCE), "-o", tmp],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if done.returncode != 0:
                    return _Library(None, f"compiling lanes.cpp failed: {done.stderr[-500:]}")
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        return _Library(None, f"could not build or load lanes.cpp: {err}")
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for suffix in DTYPES.values():
        fn = getattr(lib, f"ndf_lanes_{suffix}")
        fn.restype = None
        fn.argtypes = [p, p, p, p, i64, i64, i64, i64, i64, p, p, p, p, p, i64, i64]
        fn.argtypes += [ctypes.c_double, ctypes.c_int]
        fn = getattr(lib, f"ndf_shared_{suffix}")
        fn.restype = None
        fn.argtypes = [p, p, p, p, i64, i64, i64, i64, p, p, p, i64, i64, ctypes.c_double]
        fn.argtypes += [ctypes.c_int]
        fn = getattr(lib, f"ndf_transpose_{suffix}")
        fn.restype = None
        fn.argtypes = [p, p, i64, i64, i64, i64, ctypes.c_int]
        getattr(lib, f"ndf_lanes_vl_{suffix}").restype = ctypes.c_int
    return _Library(lib, "ready")


def native_status() -> str:
    """ "ready", or why the native kernel is unavailable (compiles it on first call)."""
    return _library().reason


def native_lanes(dtype: torch.dtype) -> int:
    """Queries per SIMD register for ``dtype`` (needs the library)."""
    lib = _library().lib
    assert lib is not None
    return getattr(lib, f"ndf_lanes_vl_{DTYPES[dtype]}")()


def native_usable(q: torch.Tensor, needs_grad: bool) -> str | None:
    """None if the native kernel can run q's attention, else the reason it cannot."""
    if q.device.type != "cpu":
        return f"it runs on CPU; q is on {q.device}"
    if q.dtype not in DTYPES:
        return f"it takes float32 or float64; q is {q.dtype}"
    if needs_grad:
        return "it is inference-only (no autograd); training uses the tiled path"
    if _library().lib is None:
        return _library().reason
    return None


@dataclass(frozen=True)
class LanePlan:
    """Where every (query tile, key slot)'s keys lie; see lanes.cpp for the kinds.

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
    nd = len(shape)
    keys = [_axis_keys(r, n) for r, n in zip(rules, shape, strict=True)]
    counts = [k.shape[1] for k in keys]
    slots = math.prod(counts)
    if slots > MAX_SLOTS:
        return None
    strides = [math.prod(shape[a + 1 :]) for a in range(nd)]
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
        key = np.zeros((t, vl, slots), np.int64)
        valid = np.ones((t, vl, slots), bool)
        for a in range(nd):
            ka = keys[a][coords[..., a]]
            view = [1] * nd
            view[a] = counts[a]
            ka = np.broadcast_to(ka.reshape(t, vl, *view), (t, vl, *counts)).reshape(t, vl, slots)
            valid &= ka >= 0
            key += np.maximum(ka, 0) * strides[a]
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


def native_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rules: list[AxisRule] | tuple[AxisRule, ...],
    shape: tuple[int, ...],
    scale: float,
    *,
    force: bool = False,
) -> torch.Tensor | None:
    """Attention of a separable pattern (per-axis ``rules``) on a grid of ``shape`` through
    the native kernels (``native_usable`` must have said yes): the shared-keys kernel when
    every query tile shares its keys (windows, stripes, axial), else the lane kernel for
    neighborhoods (or any pattern when ``force``). None when ``auto`` should keep the
    tiled path (or, with ``force``, when the plan would be too large)."""
    rules = tuple(rules)
    vl = native_lanes(q.dtype)
    shared = shared_plan(rules, shape, vl)
    if shared is not None:
        return shared_attention(q, k, v, shared, scale)
    plan = lane_plan(rules, shape, vl)
    if plan is None:
        return None
    neighborhood = any(isinstance(r, NeighborhoodRule) for r in rules)
    if force or (neighborhood and plan.gathered <= MAX_GATHERED):
        return lane_attention(q, k, v, plan, scale)
    return None


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


#: Lane registers per tile of the shared-keys kernel (``Shared::GMAX`` in lanes.cpp).
SHARED_GROUP = 4


@plan_cache(64)
def shared_plan(rules: tuple[AxisRule, ...], shape: tuple[int, ...], vl: int) -> SharedPlan | None:
    """Tiles of up to 4 x VL queries that share their keys, for patterns whose every axis is
    a partition (windows, dilated / shifted windows, stripes' short axes) or whole (axial,
    stripes' long axis): the queries of one window have exactly its keys. None for other
    rules, more than ``MAX_SLOTS`` keys per query or a plan over ``MAX_PLAN_ENTRIES``."""
    if not all(isinstance(r, PartitionRule | AllRule) for r in rules):
        return None
    keys = [_axis_keys(r, n) for r, n in zip(rules, shape, strict=True)]
    counts = [k.shape[1] for k in keys]
    slots = math.prod(counts)
    tokens = _query_tiles(rules, shape, SHARED_GROUP * vl)
    if slots > MAX_SLOTS or len(tokens) * slots > MAX_PLAN_ENTRIES:
        return None
    first = np.stack(np.unravel_index(tokens[:, 0], shape), -1)  # lane 0 is always a query
    key = np.zeros((len(tokens), slots), np.int64)
    valid = np.ones((len(tokens), slots), bool)
    for a, n in enumerate(shape):
        ka = keys[a][first[:, a]]
        view = [1] * len(shape)
        view[a] = counts[a]
        ka = np.broadcast_to(ka.reshape(len(tokens), *view), (len(tokens), *counts))
        ka = ka.reshape(len(tokens), slots)
        valid &= ka >= 0
        key = key * n + np.maximum(ka, 0)
    key = np.where(valid, key, -1)
    order = np.argsort(~valid, axis=1, kind="stable")  # a short window's keys first
    compact = np.take_along_axis(key, order, 1)
    number = valid.sum(1)
    return SharedPlan(
        tokens=np.ascontiguousarray(tokens, dtype=np.int32),
        keys=np.ascontiguousarray(compact[:, : max(1, int(number.max()))], dtype=np.int32),
        counts=number.astype(np.int32),
    )


def shared_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: SharedPlan, scale: float
) -> torch.Tensor:
    """Like ``lane_attention`` for a ``SharedPlan`` (windows): keys read in place."""
    lib = _library().lib
    assert lib is not None, native_status()
    batch, heads, n, e = q.shape
    ev = v.shape[-1]
    rows = batch * heads
    q, k, v = (x.reshape(rows, n, x.shape[-1]).contiguous() for x in (q, k, v))
    out = q.new_empty(batch, heads, n, ev)
    getattr(lib, f"ndf_shared_{DTYPES[q.dtype]}")(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        out.data_ptr(),
        rows,
        n,
        e,
        ev,
        plan.tokens.ctypes.data,
        plan.keys.ctypes.data,
        plan.counts.ctypes.data,
        plan.tiles,
        plan.slots,
        scale,
        torch.get_num_threads(),
    )
    return out


def lane_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: LanePlan, scale: float
) -> torch.Tensor:
    """q, k [B, heads, N, E], v [B, heads, N, Ev] (CPU, float32/float64, no autograd)
    -> [B, heads, N, Ev], the plan's pattern's attention."""
    lib = _library().lib
    assert lib is not None, native_status()
    batch, heads, n, e = q.shape
    ev = v.shape[-1]
    rows, vl = batch * heads, plan.lanes
    padded = n + 2 * vl  # the kernel may read 2 * VL tokens past a row's last key
    suffix, threads = DTYPES[q.dtype], torch.get_num_threads()
    kt, vt = _workspace(q.dtype, (rows, e, padded), (rows, ev, padded))
    for x, xt in ((k, kt), (v, vt)):
        x = x.reshape(rows, n, x.shape[-1]).contiguous()
        getattr(lib, f"ndf_transpose_{suffix}")(
            x.data_ptr(), xt.data_ptr(), rows, n, x.shape[-1], padded, threads
        )
    q = q.reshape(rows, n, e).contiguous()
    out = q.new_empty(batch, heads, n, ev)
    fn = getattr(lib, f"ndf_lanes_{suffix}")
    fn(
        q.data_ptr(),
        kt.data_ptr(),
        vt.data_ptr(),
        out.data_ptr(),
        rows,
        n,
        padded,
        e,
        ev,
        plan.tokens.ctypes.data,
        plan.kind.ctypes.data,
        plan.base.ctypes.data,
        plan.offsets.ctypes.data,
        plan.start.ctypes.data,
        plan.tiles,
        plan.slots,
        scale,
        threads,
    )
    return out


_workspaces = threading.local()


def _workspace(dtype: torch.dtype, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    """Scratch tensors of these shapes, reused by the calling thread while the sizes stay
    the same (fresh pages for every call cost about as much as the transposes)."""
    key = (dtype, shapes)
    if getattr(_workspaces, "key", None) != key:
        _workspaces.key = key
        _workspaces.tensors = [torch.empty(s, dtype=dtype) for s in shapes]
    return _workspaces.tensors
