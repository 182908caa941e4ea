"""The pattern protocol, the name registry used by spec strings, and ``Separable``.

A pattern says which keys each query may attend to. Its *reference* is the
bool mask returned by ``mask(layout, heads)``; fast paths in
``ndformer.kernels`` must reproduce attention under that mask exactly. Patterns hold
semantics only: nothing here knows how a kernel tiles the grid.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._index import axis_outer, partition_ids
from ..errors import check_fits
from ..layout import Grid, Points
from .axis import AllRule, AxisRule, PartitionRule, relation

#: name used in spec strings -> constructor (a class or a function returning a pattern)
REGISTRY: dict[str, Callable[..., Pattern]] = {}


def register(name: str) -> Callable[[Any], Any]:
    """Class/function decorator adding a constructor to the spec-string registry."""

    def add(factory: Any) -> Any:
        REGISTRY[name] = factory
        return factory

    return add


def list_patterns() -> list[str]:
    """Names usable in spec strings, sorted."""
    return sorted(REGISTRY)


def format_call(name: str, args: tuple = (), kwargs: dict | None = None) -> str:
    """``name(arg, key=value)`` with Python literal syntax; bare ``name`` if no arguments."""
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in (kwargs or {}).items()]
    return f"{name}({', '.join(parts)})" if parts else name


class Pattern:
    """Base class of all attention patterns. Immutable, parameter-free, hashable.

    Subclasses define the reference through ``mask_rows``; ``repr`` is a valid
    spec string (``ndformer.pattern(repr(p)) == p``).
    """

    #: True if different heads may attend to different keys (e.g. ``HeadSplit``).
    head_dependent: bool = False
    #: False for patterns defined by a formula over new keys (``Pooled``, ``Linear``).
    is_mask: bool = True

    # -- the reference -------------------------------------------------------
    def check(self, layout: Grid) -> None:
        """Raise ``ValueError`` if the pattern cannot be applied to ``layout``."""

    def mask_rows(self, layout: Grid, queries: torch.Tensor, heads: int = 1) -> torch.Tensor:
        """Bool mask rows for the given query token indices: [1 or heads, len(queries), N]."""
        raise NotImplementedError

    def effective_rows(self, layout: Grid, queries: torch.Tensor, heads: int = 1) -> torch.Tensor:
        """Like ``mask_rows``: the tokens each query's output depends on (for plots).

        Equal to ``mask_rows`` for masks; for patterns over new keys (``Pooled``,
        ``Linear``) the tokens feeding those keys.
        """
        return self.mask_rows(layout, queries, heads)

    def mask(self, layout: Grid, heads: int = 1) -> torch.Tensor:
        """The definition: bool [1 or heads, N, N], True where query i may attend to key j.

        Broadcastable to [heads, N, N]; usable as ``attn_mask`` of
        ``torch.nn.functional.scaled_dot_product_attention``. Builds N x N: only for
        tests, plots and small inputs.
        """
        self.check(layout)
        n = layout.num_tokens
        rows = heads if self.head_dependent else 1
        check_fits(f"the dense {n} x {n} mask of {self!r}", n * n * rows, "use attend's fast paths")
        return self.mask_rows(layout, torch.arange(n), heads)

    def group_ids(self, layout: Points) -> torch.Tensor | None:
        """On ``Points``: LongTensor [N] with query i attending key j iff their ids are equal
        (scenes included), or None if the pattern is not such a partition. The group
        kernel uses it; the definition stays ``mask_rows``."""
        return None

    def key_counts(self, layout: Grid, heads: int = 1, rows_per_step: int = 1024) -> torch.Tensor:
        """Number of keys each query attends to: LongTensor [1 or heads, N].

        Exact; memory O(rows_per_step * N) here, O(N) for separable patterns and groups.
        """
        self.check(layout)
        if isinstance(layout, Points) and (ids := self.group_ids(layout)) is not None:
            return torch.bincount(ids)[ids].unsqueeze(0)
        steps = [
            self.mask_rows(layout, rows, heads).sum(-1)
            for rows in torch.arange(layout.num_tokens).split(rows_per_step)
        ]
        return torch.cat(steps, dim=-1)

    def forward_flops(self, layout: Grid, heads: int, head_dim: int) -> float | None:
        """Forward FLOPs of one sample if they are not 4 * pairs * head_dim (else None)."""
        return None

    # -- composition ---------------------------------------------------------
    def __or__(self, other: Pattern) -> Pattern:
        from .compose import Union

        return Union(self, other)

    def __and__(self, other: Pattern) -> Pattern:
        from .compose import Intersection

        return Intersection(self, other)


@dataclass(frozen=True, repr=False)
class Separable(Pattern):
    """A pattern that is an AND over axes of one 1-D ``AxisRule`` per axis."""

    def axis_rules(self, layout: Grid) -> tuple[AxisRule, ...]:
        """One rule per axis of ``layout``; raises ``ValueError`` if they do not fit it."""
        raise NotImplementedError

    def check(self, layout: Grid) -> None:
        rules = self.axis_rules(layout)
        if isinstance(layout, Points) and any(r.needs_grid for r in rules):
            raise ValueError(
                f"{self!r} is defined on a grid (its windows shift inward at the grid's"
                f" borders) and {layout!r} has none: use window, stripe, serialized,"
                " flattened or rotated_sets attention on points"
            )

    def mask_rows(self, layout: Grid, queries: torch.Tensor, heads: int = 1) -> torch.Tensor:
        rules = self.axis_rules(layout)
        coords = layout.coords
        q = coords[queries]
        allowed = torch.ones(len(queries), layout.num_tokens, dtype=torch.bool)
        for axis, rule in enumerate(rules):
            allowed &= rule.allowed(q[:, axis, None], coords[None, :, axis], layout.shape[axis])
        if isinstance(layout, Points):  # never across scenes
            allowed &= layout.batch[queries, None] == layout.batch[None, :]
        return allowed.unsqueeze(0)

    def group_ids(self, layout: Points) -> torch.Tensor | None:
        rules = self.axis_rules(layout)
        if not all(isinstance(r, AllRule | PartitionRule) for r in rules):
            return None
        columns = [layout.batch] + [
            r.window_id(layout.coords[:, a])
            for a, r in enumerate(rules)
            if isinstance(r, PartitionRule)
        ]
        return partition_ids(torch.stack(columns, 1))

    def key_counts(self, layout: Grid, heads: int = 1, rows_per_step: int = 1024) -> torch.Tensor:
        if isinstance(layout, Points):
            return super().key_counts(layout, heads, rows_per_step)
        # Separable: a query's key count is the product of its per-axis counts.
        rules = self.axis_rules(layout)
        counts = [relation(r, n).sum(-1) for r, n in zip(rules, layout.shape, strict=True)]
        return axis_outer(counts, operator.mul).unsqueeze(0)
