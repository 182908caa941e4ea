"""Rotated sets for sparse points: DSVT's dynamic sparse window attention.

DSVT (Wang et al., CVPR 2023) cuts space into windows, sorts each window's occupied
voxels by their coordinates inside the window with one axis most significant, and
splits the sorted run into the fewest sets of at most ``set_size`` voxels, of nearly
equal sizes, so that every set is a dense batch whatever the density. Alternating the
sorted axis between layers (x, then y) "rotates" the sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import IntOrTuple, check_axis, check_int, check_per_axis, per_axis
from .._index import partition_ids
from ..layout import Grid, Points, as_points
from .base import format_call, register
from .sorted import SortedGroups, lexsort


def balanced_sets(position: torch.Tensor, size: torch.Tensor, set_size: int) -> torch.Tensor:
    """Set index of sorted position ``position`` in a run of ``size`` tokens (LongTensors of
    one shape): with S = ceil(size / set_size) sets, set j holds the positions
    floor(j * size / S) <= p < floor((j + 1) * size / S), i.e. p is in set
    floor(((p + 1) * S - 1) / size)."""
    sets = (size + set_size - 1) // set_size
    return ((position + 1) * sets - 1) // size


@register("rotated_sets")
@dataclass(frozen=True, repr=False)
class RotatedSets(SortedGroups):
    """DSVT's rotated sets. Windows: ``(coords + shift) // window`` per axis, per scene.
    Each window's N tokens are sorted by their coordinates inside the window,
    ``(coords + shift) % window``, compared on ``axis`` first and then on the other axes
    in increasing order (ties: token order). With S = ceil(N / set_size), the token at
    sorted position p (0-based) is in set floor(((p + 1) * S - 1) / N), so set j holds
    positions floor(j * N / S) to floor((j + 1) * N / S) - 1: at most ``set_size``
    tokens, sizes within a window differing by at most 1. Attend iff same scene, same
    window and same set.

    This is DSVT's partition exactly. DSVT fills set j to ``set_size`` entries with the
    positions floor((j * set_size + k) * N / (S * set_size)), k < set_size; these run
    through set j's positions above, some repeated, and no position appears in two
    sets. DSVT masks the repeats as keys and keeps one output per voxel, so each voxel
    attends its own set's voxels once each, as here (without the padding).

    ``window`` and ``shift`` take an int or one per axis; ``shift`` moves the windows
    like Swin's shifted windows (e.g. ``window // 2`` every other block; only
    ``shift % window`` matters). Alternate ``axis`` (0, then 1) between layers for
    DSVT's rotation. On a ``Grid`` it applies to the grid's tokens as one scene.
    """

    window: IntOrTuple
    set_size: int = 36
    axis: int = 0
    shift: IntOrTuple = 0

    def __init__(
        self, window: IntOrTuple, set_size: int = 36, axis: int = 0, shift: IntOrTuple = 0
    ) -> None:
        window = check_per_axis("RotatedSets window", window, minimum=1)
        check_int("RotatedSets set_size", set_size, minimum=1)
        check_int("RotatedSets axis", axis)
        shift = check_per_axis("RotatedSets shift", shift)
        if isinstance(window, tuple) and isinstance(shift, tuple) and len(window) != len(shift):
            raise ValueError(
                f"RotatedSets shift {shift} has {len(shift)} entries and window {window} has"
                f" {len(window)}: give one per axis, or an int"
            )
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "set_size", set_size)
        object.__setattr__(self, "axis", axis)
        object.__setattr__(self, "shift", shift)

    def _sizes(self, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...], list[int]]:
        """(window, shift, sort axes most significant first) for ``ndim`` axes."""
        window = per_axis("RotatedSets window", self.window, ndim)
        shift = per_axis("RotatedSets shift", self.shift, ndim)
        first = check_axis("RotatedSets axis", self.axis, ndim)
        return window, shift, [first] + [a for a in range(ndim) if a != first]

    def check(self, layout: Grid | Points) -> None:
        self._sizes(layout.ndim)

    def group_ids(self, layout: Grid | Points) -> torch.Tensor:
        """LongTensor [N]: one id per (scene, window, set), in token order."""
        points = as_points(layout)
        window, shift, axes = self._sizes(points.ndim)
        device = points.coords.device
        moved = points.coords + torch.tensor(shift, device=device)
        window_t = torch.tensor(window, device=device)
        inside = moved % window_t
        windows = partition_ids(torch.cat((points.batch[:, None], moved // window_t), 1))
        order = lexsort([windows, *(inside[:, a] for a in axes)])
        run = windows[order]
        first = torch.ones_like(run, dtype=torch.bool)
        first[1:] = run[1:] != run[:-1]
        index = torch.arange(len(run), device=device)
        position = index - torch.cummax(torch.where(first, index, 0), 0).values
        sets = balanced_sets(position, torch.bincount(windows)[run], self.set_size)
        starts = first.clone()
        starts[1:] |= sets[1:] != sets[:-1]
        ids = torch.empty_like(run)
        ids[order] = torch.cumsum(starts.long(), 0) - 1
        return ids

    def __repr__(self) -> str:
        kwargs: dict = {}
        if self.axis:
            kwargs["axis"] = self.axis
        if self.shift != 0:
            kwargs["shift"] = self.shift
        return format_call("rotated_sets", (self.window, self.set_size), kwargs)
