"""``ndformer bench``: plan the cases, run each in a fresh worker, collect the rows."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace

import torch

from .._checks import check_device, check_int
from .._io import run_json_worker
from ..backends import Call
from ..choice import unsupported
from ..errors import check_fits
from ..layout import Grid
from ..patterns import pattern as parse_pattern
from .measure import (
    DENSE_MASKED,
    DTYPES,
    FULL_SDPA,
    WINDOWS_RESHAPED,
    Case,
    Setting,
    case_flops,
    dense_bytes,
    pairs_per_head,
    reshapable_window,
)

#: ``attend`` backends that ``bench --backend`` can time.
FAST_BACKENDS = ("auto", "tiled", "blocksparse", "flex", "native")
#: Patterns of ``--quick`` and of a run without ``--patterns``.
DEFAULT_PATTERNS = (
    "window(8)",
    "window(8, shift=4)",
    "neighborhood(7)",
    "stripe(0, 8)",
    "axial(0)",
    "headsplit(stripe(0, 8), stripe(1, 8))",
    "neighborhood(7) | axial(0)",
    "pooled(4)",
    "pooled(cells=8)",
    "summary(8, 8)",
    "routing(8, 4)",
    "hilo(4)",
    "hilo(4, cells=8)",
    "linear",
)
#: Shapes of a run without ``--shapes``; ``--quick`` uses a smaller last volume.
DEFAULT_SHAPES = ((64, 64), (128, 128), (16, 16, 16), (32, 32, 32))
QUICK_SHAPES = ((64, 64), (128, 128), (16, 16, 16), (24, 24, 24))
#: ``--sweep``: growing sizes per number of axes (tokens from 4096 up).
SWEEP_SHAPES = {
    1: [(n,) for n in (4096, 8192, 16384, 32768, 65536)],
    2: [(n, n) for n in (64, 96, 128, 192, 256)],
    3: [(n, n, n) for n in (16, 24, 32, 48, 64)],
}


@dataclass
class BenchConfig(Setting):
    """Everything ``ndformer bench`` was asked to do: the ``Setting`` of every case (with
    ``repeats`` / ``min_seconds`` / ``warmup`` None = 3 / 0.25 s / 1 with --quick and
    --sweep, else 10 / 1 s / 2; ``backend`` for the mask patterns, the others keep
    ``auto``'s path) and which cases to plan."""

    repeats: int | None = None
    min_seconds: float | None = None
    warmup: int | None = None
    patterns: list[str] = field(default_factory=lambda: list(DEFAULT_PATTERNS))
    shapes: list[tuple[int, ...]] | None = None  # default: SWEEP / QUICK / DEFAULT_SHAPES
    #: Generated 3-D point scenes of these many occupied voxels (after the grid shapes).
    points: list[int] = field(default_factory=list)
    quick: bool = False
    sweep: bool = False
    max_memory_gib: float = 4.0
    max_seconds: float = 20.0  # per timed call; longer cases are skipped as estimated

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        device = check_device(self.device)
        for name in ("heads", "head_dim", "batch"):
            check_int(name, getattr(self, name), minimum=1)
        if self.backend not in FAST_BACKENDS:
            raise ValueError(
                f"backend must be one of {', '.join(FAST_BACKENDS)}; got {self.backend!r}"
            )
        if self.backend == "flex" and self.backward and device.type == "cpu":
            raise ValueError(
                "backend flex times inference only on CPU (no CPU backward): drop --backward"
            )
        for spec in self.patterns:
            parse_pattern(spec)  # raises a ValueError naming the problem
        if self.shapes is None:
            if self.sweep:
                self.shapes = [s for ndim in sorted(SWEEP_SHAPES) for s in SWEEP_SHAPES[ndim]]
            else:
                self.shapes = list(QUICK_SHAPES if self.quick else DEFAULT_SHAPES)
        self.shapes = [Grid(s).shape for s in self.shapes]
        for n in self.points:
            check_int("points", n, minimum=1)
        itemsize = torch.empty((), dtype=getattr(torch, self.dtype)).element_size()
        per_token = self.batch * self.heads * self.head_dim * itemsize * (8 if self.backward else 4)
        for tokens, name in [(math.prod(s), "x".join(map(str, s))) for s in self.shapes] + [
            (n, f"{n} points") for n in self.points
        ]:
            check_fits(f"bench at {name} (q, k, v and the output alone)", tokens * per_token,
                       "choose a smaller shape")  # fmt: skip
        short = self.quick or self.sweep
        if self.repeats is None:
            self.repeats = 3 if short else 10
        if self.min_seconds is None:
            self.min_seconds = 0.25 if short else 1.0
        if self.warmup is None:
            self.warmup = 1 if short else 2


@dataclass
class Row:
    """A measured case (``result``) or one that was not run (``note`` says why)."""

    case: Case
    result: dict | None = None
    note: str = ""

    def value(self, key: str):
        return None if self.result is None else self.result[key]


def plan_cases(config: BenchConfig, peak_gflops: float) -> list[Row]:
    """Cases for every shape: the reference rows first, then the patterns.

    Cases that cannot fit (pattern does not apply to the shape, dense mask too
    large, estimated time too long) become rows with a note instead of a result.
    """
    base = {f.name: getattr(config, f.name) for f in fields(Setting)}
    rows: list[Row] = []
    sizes = [(s, False) for s in config.shapes] + [((n,), True) for n in config.points]
    for shape, points in sizes:
        where = dict(shape=shape, points=points, **{**base, "backend": "auto"})
        cases = [Case(pattern="full", reference=FULL_SDPA, **where)]
        if not config.sweep:
            cases.append(Case(pattern=config.patterns[0], reference=DENSE_MASKED, **where))
        reshaped = [p for p in config.patterns if not points and reshapable_window(p, shape)]
        if reshaped:
            cases.append(Case(pattern=reshaped[0], reference=WINDOWS_RESHAPED, **where))
        cases += [
            Case(
                pattern=p,
                reference=None,
                **{**where, "backend": _backend(p, config, shape, points)},
            )
            for p in config.patterns
        ]
        if config.backward:  # every case also forward only: what training adds to inference
            cases = [c for case in cases for c in (replace(case, backward=False), case)]
        rows += [_admit(case, config, peak_gflops) for case in cases]
    return rows


def _backend(spec: str, config: BenchConfig, shape: tuple[int, ...], points: bool) -> str:
    """``config.backend`` where it runs the pattern; patterns it cannot take (those over new
    keys, unions for the native kernels, ...) keep ``auto``'s choice. The backends' own
    capability checks decide (``ndformer.backends``)."""
    if config.backend == "auto" or points:
        return "auto"
    pattern = parse_pattern(spec)
    call = Call(
        pattern,
        Grid(shape),
        torch.device(config.device),
        DTYPES[config.dtype],
        config.heads,
        config.head_dim,
        needs_grad=config.backward,
    )
    try:
        pattern.check(call.layout)
    except ValueError:
        return config.backend  # _admit turns the pattern's own error into a note
    return config.backend if unsupported(config.backend, call) is None else "auto"


def _admit(case: Case, config: BenchConfig, peak_gflops: float) -> Row:
    try:
        pairs = pairs_per_head(case.pattern, case.layout(), case.heads)
    except ValueError as err:
        return Row(case, note=f"skipped: {err}")
    if case.reference == DENSE_MASKED and dense_bytes(case) > config.max_memory_gib * 2**30:
        return Row(case, note=f"skipped: would need {dense_bytes(case) / 2**30:.1f} GiB")
    if case.reference == FULL_SDPA:
        pairs = [case.tokens**2] * case.heads
    # Even at half the matmul peak, a case this long would not be worth waiting for.
    estimate = case_flops(case, pairs) / (0.5 * peak_gflops * 1e9)
    if case.reference is not None and estimate > config.max_seconds:
        return Row(case, note=f"skipped: would take about {estimate:.0f} s per call")
    return Row(case)


def run_worker(case: Case, timeout: float = 900.0) -> dict:
    """Measure ``case`` in a fresh Python process; raises RuntimeError with its last error line."""
    return run_json_worker("ndformer.bench.worker", asdict(case), timeout)


def run_rows(
    rows: list[Row],
    peak_gflops: float,
    on_start: Callable[[Row], None] = lambda row: None,
    on_done: Callable[[Row], None] = lambda row: None,
    worker: Callable[[Case], dict] = run_worker,
) -> list[Row]:
    """Measure every admitted row in turn (never two at once). Ctrl-C stops after the
    rows finished so far; the interrupted and remaining rows get the note "not run".
    """
    pending = [r for r in rows if r.result is None and not r.note]
    try:
        for row in pending:
            on_start(row)
            try:
                row.result = worker(row.case)
                row.result["efficiency"] = row.result["gflop_per_s"] / peak_gflops
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                row.note = f"failed: {err}"
            on_done(row)
    except KeyboardInterrupt:
        for row in pending:
            if row.result is None and not row.note:
                row.note = "not run (interrupted)"
    return rows


def fit_exponent(tokens: list[int], times: list[float]) -> float | None:
    """Least-squares slope of log(time) against log(tokens): time ~ tokens ** alpha."""
    points = [(math.log(n), math.log(t)) for n, t in zip(tokens, times, strict=True) if t > 0]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def sweep_exponents(rows: list[Row]) -> dict[tuple[str, str], float | None]:
    """alpha per (pattern label, series: ``2-D``, ``3-D``, ``points``...) over the sizes
    that ran."""
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for row in rows:
        if row.result is not None:
            key = (row.case.label, row.case.series)
            series.setdefault(key, []).append((row.case.tokens, row.result["median_ms"]))
    return {
        key: fit_exponent([n for n, _ in points], [t for _, t in points])
        for key, points in series.items()
    }
