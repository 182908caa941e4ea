"""Sorted-group patterns for sparse points: Serialized (PTv3) and Flattened (FlatFormer).

Both sort each scene's tokens by a key, cut the sorted sequence into groups of
``group`` tokens (offset by ``shift``) and attend within a group. Groups have equal
sizes whatever the density of the points, which is what makes them fast. On a
``Grid`` they apply to the grid's tokens as one scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import IntOrTuple, check_int, check_per_axis, per_axis
from ..curves import ORDERS, serialize
from ..layout import Grid, Points, as_points
from .base import Pattern, format_call, register


def lexsort(keys: list[torch.Tensor]) -> torch.Tensor:
    """Permutation sorting by ``keys[0]``, ties by ``keys[1]``, ... (stable: ties keep
    token order)."""
    order = torch.arange(len(keys[0]), device=keys[0].device)
    for key in reversed(keys):
        order = order[torch.argsort(key[order], stable=True)]
    return order


def sorted_groups(batch: torch.Tensor, order: torch.Tensor, group: int, shift: int) -> torch.Tensor:
    """Group ids [N] (in token order) when tokens sorted by ``order`` (scene-major) are cut
    into runs: the token at position p of its scene's sorted run is in group
    ``(p + shift) // group`` of that scene."""
    scene = batch[order]
    first = torch.ones_like(scene, dtype=torch.bool)
    first[1:] = scene[1:] != scene[:-1]
    index = torch.arange(len(scene), device=scene.device)
    start = torch.cummax(torch.where(first, index, 0), 0).values
    position = index - start
    local = (position + shift) // group
    # sorted runs: a new group starts at every scene start and wherever `local` steps
    starts = first.clone()
    starts[1:] |= local[1:] != local[:-1]
    ids_sorted = torch.cumsum(starts.long(), 0) - 1
    ids = torch.empty_like(ids_sorted)
    ids[order] = ids_sorted
    return ids


class SortedGroups(Pattern):
    """Base: attend iff same scene and same group of the scene's sorted sequence."""

    group: int
    shift: int

    def sort_keys(self, points: Points) -> list[torch.Tensor]:
        """Keys after the scene index, most significant first."""
        raise NotImplementedError

    def group_ids(self, layout: Grid | Points) -> torch.Tensor:
        points = as_points(layout)
        order = lexsort([points.batch, *self.sort_keys(points)])
        return sorted_groups(points.batch, order, self.group, self.shift)

    def mask_rows(self, layout: Grid, queries: torch.Tensor, heads: int = 1) -> torch.Tensor:
        ids = self.group_ids(layout)
        return (ids[queries, None] == ids[None, :]).unsqueeze(0)

    def key_counts(self, layout: Grid, heads: int = 1, rows_per_step: int = 1024) -> torch.Tensor:
        self.check(layout)
        ids = self.group_ids(layout)
        return torch.bincount(ids)[ids].unsqueeze(0)


def _check_group(name: str, group: int, shift: int) -> None:
    check_int(f"{name} group", group, minimum=1)
    check_int(f"{name} shift", shift, minimum=0)
    if shift >= group:
        raise ValueError(f"{name} shift must be < group, got shift={shift}, group={group}")


@register("serialized")
@dataclass(frozen=True, repr=False)
class Serialized(SortedGroups):
    """Point Transformer V3's serialized attention: sort each scene's tokens by their
    ``order`` curve code (``z``, ``hilbert``, ``z-trans``, ``hilbert-trans``; with the
    fewest bits per axis that hold the scene's coordinates, so a scene's groups do not
    depend on the rest of the batch; ties keep token order); the token at sorted
    position p is in group ``(p + shift) // group``; attend iff same scene and same
    group. ``shift = group // 2`` between layers plays the role of Swin's shifted
    windows.
    """

    order: str = "hilbert"
    group: int = 64
    shift: int = 0

    def __init__(self, order: str = "hilbert", group: int = 64, shift: int = 0) -> None:
        if order not in ORDERS:
            raise ValueError(f"Serialized order must be one of {', '.join(ORDERS)}, got {order!r}")
        _check_group("Serialized", group, shift)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "group", group)
        object.__setattr__(self, "shift", shift)

    def check(self, layout: Grid | Points) -> None:
        if self.order.endswith("-trans") and layout.ndim < 2:
            raise ValueError(f"Serialized order {self.order!r} needs >= 2 axes, got {layout!r}")
        points = as_points(layout)
        serialize(points.coords, self.order)  # raises if the codes do not fit 63 bits

    def sort_keys(self, points: Points) -> list[torch.Tensor]:
        """Each scene's codes with the fewest bits that hold that scene's coordinates, so a
        scene's groups never depend on the other scenes of the batch (Hilbert orders
        differ between bit depths)."""
        coords, batch = points.coords, points.batch
        scenes = int(batch.max()) + 1 if batch.numel() else 0
        index = batch[:, None].expand_as(coords)
        highest = coords.new_zeros(scenes, coords.shape[1]).scatter_reduce(0, index, coords, "amax")
        bits = torch.tensor(
            [max(1, h.bit_length()) for h in highest.amax(1).tolist()], device=coords.device
        )
        codes = torch.empty(len(coords), dtype=torch.long, device=coords.device)
        point_bits = bits[batch]
        for b in point_bits.unique().tolist():
            chosen = point_bits == b
            codes[chosen] = serialize(coords[chosen], self.order, bits=b)
        return [codes]

    def __repr__(self) -> str:
        kwargs = {"group": self.group}
        if self.shift:
            kwargs["shift"] = self.shift
        return format_call("serialized", (self.order,), kwargs)


@register("flattened")
@dataclass(frozen=True, repr=False)
class Flattened(SortedGroups):
    """FlatFormer's flattened window attention: sort each scene's tokens by window index
    (``coords // window``) and then by the coordinates inside the window, both compared
    axis by axis in the order ``axes`` (default 0, 1, ...); cut into groups of ``group``
    tokens like ``Serialized``. Alternating ``axes`` between layers (e.g. ``(0, 1, 2)``
    then ``(1, 0, 2)``) gives FlatFormer's alternating sort axes.
    """

    window: IntOrTuple
    group: int = 64
    axes: tuple[int, ...] | None = None
    shift: int = 0

    def __init__(
        self,
        window: IntOrTuple,
        group: int = 64,
        axes: tuple[int, ...] | None = None,
        shift: int = 0,
    ) -> None:
        object.__setattr__(self, "window", check_per_axis("Flattened window", window, minimum=1))
        _check_group("Flattened", group, shift)
        if axes is not None:
            axes = tuple(check_per_axis("Flattened axes", tuple(axes), minimum=0))
        object.__setattr__(self, "group", group)
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "shift", shift)

    def _axes(self, ndim: int) -> tuple[int, ...]:
        if self.axes is None:
            return tuple(range(ndim))
        if sorted(self.axes) != list(range(ndim)):
            raise ValueError(
                f"Flattened axes must be a permutation of 0..{ndim - 1} for {ndim} axes,"
                f" got {self.axes}"
            )
        return self.axes

    def check(self, layout: Grid | Points) -> None:
        per_axis("Flattened window", self.window, layout.ndim)
        self._axes(layout.ndim)

    def sort_keys(self, points: Points) -> list[torch.Tensor]:
        window = torch.tensor(
            per_axis("Flattened window", self.window, points.ndim), device=points.coords.device
        )
        inside = points.coords % window
        outside = points.coords // window
        axes = self._axes(points.ndim)
        return [outside[:, a] for a in axes] + [inside[:, a] for a in axes]

    def __repr__(self) -> str:
        kwargs: dict = {"group": self.group}
        if self.axes is not None:
            kwargs["axes"] = self.axes
        if self.shift:
            kwargs["shift"] = self.shift
        return format_call("flattened", (self.window,), kwargs)
