"""Measurements: one benchmark case (time, peak memory, exact FLOPs) and the matmul peak.

A case runs in the process that calls ``measure_case``; ``ndformer bench`` starts
a fresh worker process per case (``ndformer.bench.worker``) so that the memory
one case leaves cached cannot hide or inflate the next case's peak.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..attend import attend
from ..layout import Grid, Points, as_layout
from ..patterns import pattern as parse_pattern

#: FLOPs of forward + backward over the forward's: 2 matmuls forward, 5 backward.
BACKWARD_FLOPS = 3.5

#: Pseudo-pattern names of the reference rows.
FULL_SDPA = "full (SDPA)"
DENSE_MASKED = "dense masked SDPA"
#: Windows the way Swin / timm compute them: reshape the grid to [B * windows, heads,
#: window tokens, head_dim], one 4-D SDPA, reshape back (unshifted windows that divide it).
WINDOWS_RESHAPED = "windows by reshape (SDPA)"

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(kw_only=True)
class Setting:
    """How a case is measured: shared by every ``Case`` and the ``BenchConfig`` that plans
    them (``plan_cases`` copies these fields from the config into each case). Keyword-only,
    so that a case's own fields stay positional."""

    heads: int = 4
    head_dim: int = 32
    batch: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    backward: bool = False
    repeats: int = 10  # timed calls (at least)
    min_seconds: float = 0.5  # keep timing at least this long
    warmup: int = 2  # untimed calls first
    backend: str = "auto"  # attend's backend for pattern rows


@dataclass
class Case(Setting):
    """One measurement: a pattern spec (or a reference row) on one grid shape, or with
    ``points`` on a generated 3-D scene of ``shape[0]`` occupied voxels."""

    pattern: str
    reference: str | None  # None, FULL_SDPA or DENSE_MASKED (then ``pattern`` gives the mask)
    shape: tuple[int, ...]
    points: bool = False

    @property
    def label(self) -> str:
        if self.reference:
            return self.reference
        return self.pattern if self.backend == "auto" else f"{self.pattern} [{self.backend}]"

    @property
    def tokens(self) -> int:
        return math.prod(self.shape)

    @property
    def series(self) -> str:
        """What the case's size grows along: ``2-D``, ``3-D``, ... or ``points``."""
        return "points" if self.points else f"{len(self.shape)}-D"

    @property
    def shape_label(self) -> str:
        return f"{self.shape[0]} points" if self.points else "x".join(map(str, self.shape))

    def layout(self) -> Grid | Points:
        if self.points:
            from ..points_data import surface_voxels

            return Points(surface_voxels(self.shape[0], seed=0))
        return Grid(self.shape)


def pairs_per_head(spec: str, layout: Grid | Points | tuple[int, ...], heads: int) -> list[int]:
    """Exact attended (query, key) pairs of each head, counted without building N x N."""
    counts = parse_pattern(spec).key_counts(as_layout(layout), heads=heads).sum(-1)
    return counts.expand(heads).tolist()


def case_flops(case: Case, pairs: list[int]) -> float:
    """4 * pairs * head_dim * batch summed over heads (or the pattern's own count, e.g.
    ``Linear``: 4 * N * head_dim**2 per head); x3.5 in all with backward (the forward's
    two matmuls, Q K^T and P V, and the backward's five: Q K^T again, dO V^T, dQ, dK and
    dV — FlashAttention's accounting)."""
    own = None
    if case.reference is None:
        own = parse_pattern(case.pattern).forward_flops(case.layout(), case.heads, case.head_dim)
    forward = (own if own is not None else 4.0 * sum(pairs) * case.head_dim) * case.batch
    return forward * (BACKWARD_FLOPS if case.backward else 1.0)


def dense_bytes(case: Case) -> int:
    """Memory dense masked SDPA needs: the bool mask plus about two float score tensors."""
    n = case.tokens
    item = torch.tensor([], dtype=DTYPES[case.dtype]).element_size()
    scores = case.batch * case.heads * n * n * item
    return (
        n * n * (case.heads if parse_pattern(case.pattern).head_dependent else 1)
        + (3 if case.backward else 2) * scores
    )


def matmul_peak(device: str = "cpu", size: int = 2048, repeats: int = 10) -> float:
    """The machine's float32 matmul peak in GFLOP/s: the fastest of ``repeats`` square
    matmuls (on a shared machine the median drifts with the neighbours' load; the
    fastest call is what the hardware can do, so efficiencies are not flattered)."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    seconds = _timed(lambda: a @ b, device, repeats, min_seconds=0.0)
    return 2 * size**3 / min(seconds) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(
    fn: Callable[[], object], device: str, repeats: int, min_seconds: float, warmup: int = 2
) -> list[float]:
    """Seconds per call after ``warmup`` calls; at least ``repeats`` calls and ``min_seconds``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - started < min_seconds:
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
        if len(samples) >= 1000:
            break
    return samples


# -- peak memory ------------------------------------------------------------
def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of a block, in bytes: CUDA ``max_memory_allocated``, or on Linux the
    resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``)
    minus the resident size at the start; elsewhere the growth of ``ru_maxrss``.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._proc = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._start = _proc_status_kib("VmRSS")
            self._proc = self._start is not None
        except OSError:
            pass
        if not self._proc:
            self._start = _maxrss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self._start
        elif self._proc:
            self.bytes = (_proc_status_kib("VmHWM") - self._start) * 1024
        else:
            self.bytes = _maxrss_bytes() - self._start


def _maxrss_bytes() -> int:
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# -- one case -----------------------------------------------------------------
def _runner(case: Case, layout: Grid | Points, q, k, v, grad) -> Callable[[], object]:
    grid = layout
    if case.reference == FULL_SDPA:

        def forward():
            return F.scaled_dot_product_attention(q, k, v)

    elif case.reference == DENSE_MASKED:
        mask = parse_pattern(case.pattern).mask(grid, case.heads).to(case.device)

        def forward():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    elif case.reference == WINDOWS_RESHAPED:
        size = reshapable_window(case.pattern, case.shape)

        def forward():
            return windows_by_reshape(q, k, v, case.shape, size)

    else:
        spec = parse_pattern(case.pattern)

        def forward():
            return attend(q, k, v, spec, grid, backend=case.backend)

    if not case.backward:

        def run():
            with torch.inference_mode():
                return forward()

        return run

    def run_backward():
        for x in (q, k, v):
            x.grad = None
        forward().backward(grad)

    return run_backward


def reshapable_window(spec: str, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The window size per axis if ``spec`` is an unshifted, undilated ``Window`` whose size
    divides ``shape`` on every axis (what the reshape path computes), else None."""
    from ..patterns import Window

    pattern = parse_pattern(spec)
    if not isinstance(pattern, Window) or pattern.shift not in (0, (0,) * len(shape)):
        return None
    if pattern.dilation not in (1, (1,) * len(shape)):
        return None
    size = pattern.size if isinstance(pattern.size, tuple) else (pattern.size,) * len(shape)
    if len(size) != len(shape) or any(n % s for n, s in zip(shape, size, strict=True)):
        return None
    return size


def windows_by_reshape(q, k, v, shape: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
    """Window attention as Swin / timm write it, in N-D: q, k, v [B, h, N, E] viewed as
    [B, h, *(windows_a, size_a)], permuted to [B, h, windows, window tokens, E], one SDPA,
    permuted back."""
    b, h, n = q.shape[:3]
    nd = len(shape)
    split = [d for s, w in zip(shape, size, strict=True) for d in (s // w, w)]
    order = [0, 1, *range(2, 2 + 2 * nd, 2), *range(3, 3 + 2 * nd, 2), 2 + 2 * nd]
    windows = math.prod(s // w for s, w in zip(shape, size, strict=True))

    def to_windows(x):
        grid = x.reshape(b, h, *split, x.shape[-1]).permute(order)
        return grid.reshape(b, h, windows, -1, x.shape[-1])

    out = F.scaled_dot_product_attention(to_windows(q), to_windows(k), to_windows(v))
    inverse = [order.index(i) for i in range(len(order))]
    sizes = [split[i - 2] for i in order[2:-1]]
    back = out.reshape(b, h, *sizes, v.shape[-1]).permute(inverse)
    return back.reshape(b, h, n, v.shape[-1])


def measure_case(case: Case) -> dict:
    """Run ``case``; returns timings (ms), peak memory (MiB) and exact counts as a dict."""
    torch.manual_seed(0)
    dtype = DTYPES[case.dtype]
    pattern_spec = "full" if case.reference == FULL_SDPA else case.pattern
    layout = case.layout()
    pairs = pairs_per_head(pattern_spec, layout, case.heads)
    with PeakMemory(case.device) as peak:
        shape = (case.batch, case.heads, case.tokens, case.head_dim)
        q, k, v = (
            torch.randn(shape, device=case.device, dtype=dtype, requires_grad=case.backward)
            for _ in range(3)
        )
        grad = torch.randn(shape, device=case.device, dtype=dtype) if case.backward else None
        run = _runner(case, layout, q, k, v, grad)
        seconds = _timed(run, case.device, case.repeats, case.min_seconds, case.warmup)
    ms = [s * 1e3 for s in seconds]
    quartiles = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    median = statistics.median(ms)
    flops = case_flops(case, pairs)
    return {
        **asdict(case),
        "median_ms": median,
        "iqr_ms": quartiles[2] - quartiles[0],
        "runs": len(ms),
        "peak_mib": peak.bytes / 2**20,
        "pairs": sum(pairs) / case.heads,
        "gflop": flops / 1e9,
        "gflop_per_s": flops / 1e9 / (median / 1e3),
        "kernel": case_backend(case, layout),
    }


def case_backend(case: Case, layout: Grid | Points) -> str:
    """The backend that ran a case: ``sdpa`` for the reference rows, else what ``attend``
    chose (``ndformer.backends``, the same checks ``attend`` uses)."""
    if case.reference is not None:
        return "sdpa"
    if case.backend != "auto":
        return case.backend
    from ..backends import Call
    from ..choice import chosen

    call = Call(parse_pattern(case.pattern), layout, torch.device(case.device),
                DTYPES[case.dtype], case.heads, case.head_dim, case.backward)  # fmt: skip
    return chosen(call)
