"""Per-axis rules: the 1-D relations that separable patterns combine with AND.

Every local pattern of the core (Full, Window, Stripe, Axial, Causal,
Neighborhood) says, for each axis separately, whether the query coordinate
``q`` and the key coordinate ``k`` on that axis are compatible; a key is
attended iff it is compatible on every axis. An ``AxisRule`` is that 1-D
relation. ``allowed`` is the definition; ``query_groups`` says how the fast
paths tile the axis (queries that share most of their keys go together).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._cache import plan_cache


class AxisRule:
    """A relation between query and key coordinates on one axis of length ``length``."""

    #: True when the keys of a query tile stay within a bounded halo of the
    #: tile (windows, neighborhoods, a whole axis). Causal axes are not: the
    #: tiled-SDPA fast path would need every earlier key in every tile.
    local: bool = True
    #: True when the rule needs the axis' length (it clamps at the grid's borders), so it
    #: has no meaning on sparse ``Points``.
    needs_grid: bool = False

    def allowed(self, q: torch.Tensor, k: torch.Tensor, length: int) -> torch.Tensor:
        """Bool tensor: may query coordinate ``q`` see key coordinate ``k``? (broadcasts)"""
        raise NotImplementedError

    def query_groups(self, length: int, tile: int) -> list[torch.Tensor]:
        """Partition of ``range(length)`` into query tiles (1-D LongTensors).

        ``tile`` is the preferred tile length; rules whose queries fall into
        natural groups (windows, a whole axis) ignore it.
        """
        raise NotImplementedError


def relation(rule: AxisRule, length: int) -> torch.Tensor:
    """The rule's full [length, length] bool relation (rows: queries, columns: keys)."""
    return _relation(rule, length)


@plan_cache(256)
def _relation(rule: AxisRule, length: int) -> torch.Tensor:
    c = torch.arange(length)
    return rule.allowed(c[:, None], c[None, :], length)


def _chunks(positions: torch.Tensor, tile: int) -> list[torch.Tensor]:
    return list(torch.split(positions, tile))


@dataclass(frozen=True)
class AllRule(AxisRule):
    """Every key coordinate on the axis (Full; the long axis of a stripe)."""

    def allowed(self, q: torch.Tensor, k: torch.Tensor, length: int) -> torch.Tensor:
        return torch.ones(torch.broadcast_shapes(q.shape, k.shape), dtype=torch.bool)

    def query_groups(self, length: int, tile: int) -> list[torch.Tensor]:
        return [torch.arange(length)]


@dataclass(frozen=True)
class PartitionRule(AxisRule):
    """Same window: with c' = c + shift, equal ``c' // (block*dilation)`` and ``c' % dilation``."""

    block: int
    dilation: int = 1
    shift: int = 0

    def window_id(self, c: torch.Tensor) -> torch.Tensor:
        shifted = c + self.shift
        return (shifted // (self.block * self.dilation)) * self.dilation + shifted % self.dilation

    def allowed(self, q: torch.Tensor, k: torch.Tensor, length: int) -> torch.Tensor:
        return self.window_id(q) == self.window_id(k)

    def query_groups(self, length: int, tile: int) -> list[torch.Tensor]:
        ids = self.window_id(torch.arange(length))
        order = torch.argsort(ids, stable=True)
        _, counts = torch.unique_consecutive(ids[order], return_counts=True)
        return list(torch.split(order, counts.tolist()))


@dataclass(frozen=True)
class NeighborhoodRule(AxisRule):
    """Neighborhood attention on one axis (NATTEN semantics, with its stride); see
    ``Neighborhood``."""

    kernel: int
    dilation: int = 1
    causal: bool = False
    stride: int = 1
    needs_grid = True

    def allowed(self, q: torch.Tensor, k: torch.Tensor, length: int) -> torch.Tensor:
        d, kernel, s = self.dilation, self.kernel, self.stride
        same_group = (q % d) == (k % d)
        jq, jk = q // d, k // d
        group_length = (length - q % d + d - 1) // d
        # the query whose window the stride group shares: the last of the group (causal)
        # or its centre (right of centre for an even stride), clipped to the axis
        first = (jq // s) * s
        leader = torch.minimum(first + (s - 1 if self.causal else s // 2), group_length - 1)
        if self.causal:
            return same_group & (jk <= jq) & (leader - jk < kernel)
        left = kernel // 2
        right = kernel // 2 - (1 if kernel % 2 == 0 else 0)
        centre = torch.minimum(torch.clamp(leader, min=left), group_length - 1 - right)
        return same_group & (centre - left <= jk) & (jk <= centre + right)

    def query_groups(self, length: int, tile: int) -> list[torch.Tensor]:
        groups: list[torch.Tensor] = []
        for residue in range(min(self.dilation, length)):
            groups += _chunks(torch.arange(residue, length, self.dilation), tile)
        return groups


@dataclass(frozen=True)
class CausalRule(AxisRule):
    """Keys at or before the query on this axis (k <= q)."""

    local = False

    def allowed(self, q: torch.Tensor, k: torch.Tensor, length: int) -> torch.Tensor:
        return k <= q

    def query_groups(self, length: int, tile: int) -> list[torch.Tensor]:
        return _chunks(torch.arange(length), tile)
