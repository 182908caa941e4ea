"""Composition: ``a | b`` (Union), ``a & b`` (Intersection) and ``HeadSplit``."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .._checks import check_int
from .._index import partition_ids
from ..layout import Grid, Points
from .base import Pattern, format_call, register


def _check_parts(kind: str, parts: tuple, minimum: int) -> tuple[Pattern, ...]:
    if len(parts) < minimum:
        raise ValueError(f"{kind} needs at least {minimum} patterns, got {len(parts)}")
    for i, p in enumerate(parts):
        if not isinstance(p, Pattern):
            raise ValueError(f"{kind} argument {i} must be a pattern, got {p!r}")
    return tuple(parts)


@dataclass(frozen=True, repr=False)
class _Combination(Pattern):
    """A pattern made of ``parts`` combined key by key with a bool operator."""

    parts: tuple[Pattern, ...]

    def __init__(self, *parts: Pattern) -> None:
        flat: list[Pattern] = []
        for p in _check_parts(type(self).__name__, parts, 2):
            if not p.is_mask:
                raise ValueError(
                    f"{type(self).__name__} combines masks key by key; {p!r} is not a mask"
                    " (use HeadSplit to give it its own heads)"
                )
            flat += p.parts if type(p) is type(self) else [p]
        object.__setattr__(self, "parts", tuple(flat))

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        return any(p.head_dependent for p in self.parts)

    @staticmethod
    def combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check(self, layout: Grid) -> None:
        for p in self.parts:
            p.check(layout)

    def fold(self, masks: list[torch.Tensor]) -> torch.Tensor:
        """Combine the parts' bool masks (one per part, broadcastable) with ``combine``."""
        result = masks[0]
        for m in masks[1:]:
            result = self.combine(result, m)
        return result

    def mask_rows(self, layout: Grid, queries: torch.Tensor, heads: int = 1) -> torch.Tensor:
        return self.fold([p.mask_rows(layout, queries, heads) for p in self.parts])

    def group_ids(self, layout: Points) -> torch.Tensor | None:
        # Only an intersection of partitions is a partition (the pairs of ids).
        if not isinstance(self, Intersection) or self.head_dependent:
            return None
        ids = [p.group_ids(layout) for p in self.parts]
        if any(i is None for i in ids):
            return None
        return partition_ids(torch.stack(ids, 1))


@register("union")
@dataclass(frozen=True, repr=False, init=False)
class Union(_Combination):
    """Attend iff any part allows the pair (``a | b``): e.g. local window + axial."""

    @staticmethod
    def combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a | b

    def __repr__(self) -> str:
        return " | ".join(repr(p) for p in self.parts)


@register("intersection")
@dataclass(frozen=True, repr=False, init=False)
class Intersection(_Combination):
    """Attend iff every part allows the pair (``a & b``): e.g. causal neighborhood in time."""

    @staticmethod
    def combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a & b

    def __repr__(self) -> str:
        return " & ".join(f"({p!r})" if isinstance(p, Union) else repr(p) for p in self.parts)


@register("headsplit")
@dataclass(frozen=True, repr=False)
class HeadSplit(Pattern):
    """Heads are divided into contiguous groups; group i uses ``patterns[i]``.

    Without ``fractions`` the groups are equal (heads must divide evenly). With
    ``fractions`` (positive, summing to 1) group i spans heads
    ``[floor(heads * f_0..i-1), floor(heads * f_0..i))``, so the first group has
    ``int(heads * f_0)`` heads and a group may be empty when there are few heads.
    CSWin is ``HeadSplit(Stripe(0, w), Stripe(1, w))``.
    """

    patterns: tuple[Pattern, ...]
    fractions: tuple[float, ...] | None = None
    head_dependent = True

    def __init__(self, *patterns: Pattern, fractions: tuple[float, ...] | None = None) -> None:
        object.__setattr__(self, "patterns", _check_parts("HeadSplit", patterns, 1))
        if fractions is not None:
            fractions = tuple(fractions)
            if len(fractions) != len(patterns):
                raise ValueError(
                    f"HeadSplit fractions has {len(fractions)} entries for {len(patterns)} patterns"
                )
            if any(
                isinstance(f, bool) or not isinstance(f, int | float) or f <= 0 for f in fractions
            ):
                raise ValueError(f"HeadSplit fractions must be positive numbers, got {fractions}")
            if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
                raise ValueError(f"HeadSplit fractions must sum to 1, got {fractions}")
        object.__setattr__(self, "fractions", fractions)

    def head_groups(self, heads: int) -> list[tuple[int, int]]:
        """[start, stop) of the heads of each pattern, for ``heads`` heads."""
        check_int("heads", heads, minimum=1)
        n = len(self.patterns)
        if self.fractions is None:
            if heads % n:
                raise ValueError(
                    f"HeadSplit with {n} patterns needs a number of heads divisible by {n},"
                    f" got heads={heads} (or pass fractions=...)"
                )
            bounds = [i * heads // n for i in range(n + 1)]
        else:
            cumulative = [sum(self.fractions[:i]) for i in range(n + 1)]
            bounds = [math.floor(heads * c + 1e-9) for c in cumulative[:-1]] + [heads]
        return list(itertools.pairwise(bounds))

    @property
    def is_mask(self) -> bool:  # type: ignore[override]
        return all(p.is_mask for p in self.patterns)

    def check(self, layout: Grid) -> None:
        for p in self.patterns:
            p.check(layout)

    def stack_heads(self, heads: int, part_mask) -> torch.Tensor:
        """``part_mask(pattern, group_heads)`` -> [1 or group_heads, ...] for every non-empty
        head group, expanded and stacked to [heads, ...]."""
        pieces = []
        for pattern, (start, stop) in zip(self.patterns, self.head_groups(heads), strict=True):
            if stop > start:
                m = part_mask(pattern, stop - start)
                pieces.append(m.expand(stop - start, *m.shape[1:]))
        return torch.cat(pieces, dim=0)

    def mask_rows(self, layout: Grid, queries: torch.Tensor, heads: int = 1) -> torch.Tensor:
        return self.stack_heads(heads, lambda p, h: p.mask_rows(layout, queries, h))

    def effective_rows(self, layout: Grid, queries: torch.Tensor, heads: int = 1) -> torch.Tensor:
        return self.stack_heads(heads, lambda p, h: p.effective_rows(layout, queries, h))

    def key_counts(self, layout: Grid, heads: int = 1, rows_per_step: int = 1024) -> torch.Tensor:
        # Each head group counts with its own pattern (O(N) for separable parts).
        return self.stack_heads(heads, lambda p, h: p.key_counts(layout, h, rows_per_step))

    def __repr__(self) -> str:
        kwargs = {"fractions": self.fractions} if self.fractions is not None else {}
        return format_call("headsplit", self.patterns, kwargs)
