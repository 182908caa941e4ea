"""Native CPU kernels for local separable patterns (``cpp/``), compiled once per machine.

Three kernels, all computing only the pairs the pattern allows:

- the *shared-keys* kernel (``shared.h``), for patterns whose queries come in groups that
  share every key (windows — shifted, dilated, non-dividing —, stripes, axial): up to 4
  SIMD registers of queries per tile (64 float32 queries) against the group's keys read
  in place as broadcasts, register-blocked 4 queries-registers x 4 keys (or value
  channels); no transposes, no masks;
- the *lane* kernel (``lanes.h``), for any separable pattern: VL queries (one register:
  16 float32 or 8 float64) walk their key lists together; a slot's VL keys are VL
  consecutive tokens (a vector load of K^T), one shared token, or a few tokens apart at
  borders (a permute). The tiled path computes whole key halos instead (4x the pairs of
  neighborhood(7));
- the *stacked* kernel (``stack.h``), for the lane tiles of neighborhoods whose keys are
  one vector load each (inside the grid and at clamped borders): up to 3 tiles stacked
  along the grid share each loaded key vector from registers.

Plans (which keys each tile of queries reads) are built in ``lane_plans.py`` from the
pattern's per-axis rules and cached per (rules, shape, lanes).

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

from .._cache import cache_root
from ..patterns.axis import AxisRule, NeighborhoodRule
from . import lane_plans
from .lane_plans import (
    BCAST,
    GATHER,
    PERM,
    SHARED_GROUP,
    SHIFT,
    SKIP,
    LanePlan,
    SharedPlan,
    lane_plan,
    shared_plan,
)
from .stack_plans import StackPlan, empty_stack, stack_plan

SOURCES = Path(__file__).with_name("cpp")
SOURCE = SOURCES / "lanes.cpp"  # includes the headers beside it
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")
DTYPES = {torch.float32: "f32", torch.float64: "f64"}
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


def _source_texts() -> list[str]:
    return [p.read_text() for p in sorted(SOURCES.iterdir()) if p.suffix in (".cpp", ".h")]


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
            "\n".join([*_source_texts(), " ".join(FLAGS), version, _cpu_signature()]).encode()
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
        fn.argtypes = [p, p, p, p, p, i64, i64, i64, i64, i64]  # tensors and sizes
        fn.argtypes += [p, p, p, p, p, p, i64]  # lane plan and its tiles to run
        fn.argtypes += [p, p, p, p, p, p, p, p, p, i64]  # stacked plan
        fn.argtypes += [i64, ctypes.c_double, ctypes.c_int]
        fn = getattr(lib, f"ndf_shared_{suffix}")
        fn.restype = None
        fn.argtypes = [p, p, p, p, i64, i64, i64, i64, p, p, p, i64, i64, ctypes.c_double]
        fn.argtypes += [ctypes.c_int]
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


def native_unavailable(device: torch.device, dtype: torch.dtype, needs_grad: bool) -> str | None:
    """None if the native kernels can run on ``device`` in ``dtype``, else the reason."""
    if device.type != "cpu":
        return f"runs on CPU; the inputs are on {device}"
    if dtype not in DTYPES:
        return f"takes float32 or float64; the inputs are {dtype}"
    if needs_grad:
        return "is inference-only (no autograd); training uses the tiled path"
    if _library().lib is None:
        return _library().reason
    return None


@dataclass(frozen=True)
class NativePlan:
    """What the native kernels run for one (pattern rules, grid shape, dtype): the shared-keys
    plan when every query tile shares its keys (windows, stripes, axial), else the lane plan
    with its stacked regrouping (neighborhoods, or any separable pattern)."""

    shared: SharedPlan | None
    lanes: LanePlan | None
    stack: StackPlan | None
    #: Neighborhood rules on some axis (the lane kernel is the fast path for those).
    neighborhood: bool

    @property
    def kernel(self) -> str:
        return "shared" if self.shared is not None else "lanes"


def native_plan(rules: tuple[AxisRule, ...], shape: tuple[int, ...], dtype: torch.dtype):
    """The native plan of a separable pattern (per-axis ``rules``) on a grid of ``shape``,
    or the reason there is none (a ``str``): the one place that decides shared vs lanes vs
    stacked. Needs the library (``native_unavailable`` is None)."""
    rules = tuple(rules)
    vl = native_lanes(dtype)
    shared = shared_plan(rules, shape, vl)
    neighborhood = any(isinstance(r, NeighborhoodRule) for r in rules)
    if shared is not None:
        return NativePlan(shared, None, None, neighborhood)
    plan = lane_plan(rules, shape, vl)
    if plan is None:
        return (
            f"has too many keys per query for this pattern (its plan would exceed"
            f" {lane_plans.MAX_SLOTS} keys per query or {lane_plans.MAX_PLAN_ENTRIES} tile slots)"
        )
    return NativePlan(None, plan, stack_plan(rules, shape, vl), neighborhood)


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


def native_attention(q, k, v, plan: NativePlan, scale: float) -> torch.Tensor:
    """q, k [B, heads, N, E], v [B, heads, N, Ev] -> [B, heads, N, Ev] through ``plan``."""
    if plan.shared is not None:
        return shared_attention(q, k, v, plan.shared, scale)
    return lane_attention(q, k, v, plan.lanes, scale, plan.stack)


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
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: LanePlan,
    scale: float,
    stack: StackPlan | None = None,
) -> torch.Tensor:
    """q, k [B, heads, N, E], v [B, heads, N, Ev] (CPU, float32/float64, no autograd)
    -> [B, heads, N, Ev], the plan's pattern's attention; the tiles of ``stack`` (the
    same plan regrouped) through the stacked kernel, the rest through the lane kernel."""
    lib = _library().lib
    assert lib is not None, native_status()
    batch, heads, n, e = q.shape
    ev = v.shape[-1]
    rows, vl, threads = batch * heads, plan.lanes, torch.get_num_threads()
    stack = stack if stack is not None else empty_stack(plan.tiles, vl)
    rest, chunks = stack.rest, stack.chunks
    if len(rest) and len(chunks):  # the lane kernel's tiles need the whole row transposed
        chunks = np.array([[0, stack.groups, 0, n]], np.int64)
    widest = int((chunks[:, 3] - chunks[:, 2]).max()) if len(chunks) else n
    padded = min(widest, n) + 2 * vl  # the kernels read up to 2 * vl columns past the end
    work = _workspace(q.dtype, (max(threads, 1), e + ev, padded))
    q, k, v = (x.reshape(rows, n, x.shape[-1]).contiguous() for x in (q, k, v))
    out = q.new_empty(batch, heads, n, ev)
    getattr(lib, f"ndf_lanes_{DTYPES[q.dtype]}")(
        *(x.data_ptr() for x in (q, k, v, out, work)),
        rows,
        n,
        padded,
        e,
        ev,
        *(x.ctypes.data for x in (plan.tokens, plan.kind, plan.base, plan.offsets, plan.start)),
        rest.ctypes.data,
        len(rest),
        *(x.ctypes.data for x in (stack.tok0, stack.lanes, stack.sig, stack.perm, stack.idx)),
        *(x.ctypes.data for x in (stack.first, stack.blocks, stack.column, chunks)),
        len(chunks),
        plan.slots,
        scale,
        threads,
    )
    return out


_workspaces = threading.local()


def _workspace(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Scratch of this shape, reused by the calling thread while the size stays the same
    (fresh pages for every call cost about as much as the transposes)."""
    key = (dtype, shape)
    if getattr(_workspaces, "key", None) != key:
        _workspaces.key = key
        _workspaces.tensor = torch.empty(shape, dtype=dtype)
    return _workspaces.tensor


__all__ = [
    "BCAST",
    "GATHER",
    "PERM",
    "SHARED_GROUP",
    "SHIFT",
    "SKIP",
    "LanePlan",
    "NativePlan",
    "SharedPlan",
    "StackPlan",
    "lane_attention",
    "lane_plan",
    "native_attention",
    "native_declines",
    "native_lanes",
    "native_plan",
    "native_status",
    "native_unavailable",
    "shared_attention",
    "shared_plan",
    "stack_plan",
]
