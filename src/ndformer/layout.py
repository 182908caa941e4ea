"""Token layouts: where each token sits. Patterns are defined on layouts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._cache import plan_cache
from ._checks import check_int


@dataclass(frozen=True)
class Grid:
    """A dense grid of tokens with any number of axes >= 1.

    Tokens are flattened row-major (the last axis varies fastest), which is the
    order of ``x.reshape(B, -1, dim)`` for channels-last tokens ``x`` of shape
    ``[B, *shape, dim]``.

    >>> g = Grid((2, 3))
    >>> g.num_tokens, g.coords[4].tolist()
    (6, [1, 1])
    """

    shape: tuple[int, ...]

    def __init__(self, shape: int | tuple[int, ...] | list[int] | torch.Size) -> None:
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        try:
            shape = tuple(shape)
        except TypeError:
            raise ValueError(
                f"Grid shape must be an int or a tuple of ints, got {shape!r}"
            ) from None
        if len(shape) == 0:
            raise ValueError("Grid shape must have at least one axis, got ()")
        for axis, size in enumerate(shape):
            check_int(f"Grid shape[{axis}] (shape {shape})", size, minimum=1)
        object.__setattr__(self, "shape", shape)

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def num_tokens(self) -> int:
        """Number of tokens N = prod(shape)."""
        return math.prod(self.shape)

    @property
    def coords(self) -> torch.Tensor:
        """Integer coordinates of every token, LongTensor [N, ndim], in token order."""
        return grid_coords(self.shape, torch.device("cpu"))

    def coords_on(self, device: torch.device | str) -> torch.Tensor:
        """``coords`` on ``device`` (cached; do not modify in place)."""
        return grid_coords(self.shape, torch.device(device))

    def __repr__(self) -> str:
        return f"Grid({self.shape})"


@plan_cache(64)
def grid_coords(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    axes = [torch.arange(size, device=device) for size in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


def as_layout(layout: Grid | tuple[int, ...] | list[int]) -> Grid:
    """Accept a layout object or a plain shape tuple."""
    if isinstance(layout, Grid):
        return layout
    return Grid(layout)
