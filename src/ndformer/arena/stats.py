"""Intervals over seeds, and which arena entries a budget cannot tell apart."""

from __future__ import annotations

import math
import statistics

#: Two-sided 95% quantiles of Student's t distribution for 1..30 degrees of freedom.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (a close
    approximation beyond 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T_975[df - 1] if df <= len(T_975) else 1.96 + 2.4 / df


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t interval of the mean over seeds,
    mean ± t(0.975, S - 1) · sd / √S, clipped to [0, 1]. Needs at least two seeds."""
    if len(values) < 2:
        raise ValueError(f"a seed interval needs at least 2 seeds, got {len(values)}")
    mean = statistics.fmean(values)
    half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def indistinguishable(summary: list[dict]) -> list[str]:
    """Entries whose interval overlaps the best entry's (``value``, ``low``, ``high``):
    at this budget they cannot be told apart from it."""
    ok = [s for s in summary if "value" in s]
    if len(ok) < 2:
        return []
    best = max(ok, key=lambda s: s["value"])
    return [s["pattern"] for s in ok if s is not best and s["high"] >= best["low"]]
