"""Benchmarks of attention patterns: time, peak memory, exact FLOPs and efficiency."""

from .measure import DENSE_MASKED, FULL_SDPA, Case, matmul_peak, measure_case
from .runner import (
    DEFAULT_PATTERNS,
    DEFAULT_SHAPES,
    BenchConfig,
    Row,
    fit_exponent,
    plan_cases,
    run_rows,
    sweep_exponents,
)

__all__ = [
    "DEFAULT_PATTERNS",
    "DEFAULT_SHAPES",
    "DENSE_MASKED",
    "FULL_SDPA",
    "BenchConfig",
    "Case",
    "Row",
    "fit_exponent",
    "matmul_peak",
    "measure_case",
    "plan_cases",
    "run_rows",
    "sweep_exponents",
]
