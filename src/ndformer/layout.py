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


class Points:
    """A sparse layout: N tokens at integer coordinates, from one or several scenes.

    ``coords`` [N, ndim] (ints >= 0, any ndim >= 1) and ``batch`` [N] (the scene
    of each token, default all 0). Several scenes of different sizes go in one
    padding-free sequence; attention never crosses scenes. Token order is the
    caller's: patterns and kernels never require sorted tokens.

    Patterns keep their definitions, restricted to the tokens that exist and to
    pairs in the same scene. ``shape`` is the extent ``coords.max(0) + 1``.
    Compared and hashed by identity (it holds tensors).

    >>> p = Points(torch.tensor([[0, 0], [5, 2], [1, 1]]), batch=torch.tensor([0, 1, 0]))
    >>> p.num_tokens, p.shape, p.num_scenes
    (3, (6, 3), 2)
    """

    def __init__(self, coords: torch.Tensor, batch: torch.Tensor | None = None) -> None:
        coords = torch.as_tensor(coords)
        if coords.dim() != 2 or coords.shape[0] < 1 or coords.shape[1] < 1:
            raise ValueError(
                f"Points coords must be [N, ndim] with N >= 1 and ndim >= 1, got"
                f" {tuple(coords.shape)}"
            )
        if coords.dtype.is_floating_point or coords.dtype == torch.bool:
            raise ValueError(
                f"Points coords must be integers (voxel indices), got {coords.dtype};"
                " quantize float points first (e.g. PointTokenizer)"
            )
        if bool((coords < 0).any()):
            axis = int((coords < 0).any(0).nonzero()[0])
            raise ValueError(
                f"Points coords must be >= 0; axis {axis} has minimum"
                f" {int(coords[:, axis].min())} (coords {tuple(coords.shape)}): subtract the"
                " minimum first"
            )
        n = coords.shape[0]
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=coords.device)
        batch = torch.as_tensor(batch, device=coords.device)
        if batch.shape != (n,) or batch.dtype.is_floating_point or batch.dtype == torch.bool:
            raise ValueError(
                f"Points batch must be an integer tensor [N] = [{n}] (one scene index per"
                f" token), got {tuple(batch.shape)} {batch.dtype}"
            )
        if bool((batch < 0).any()):
            raise ValueError(f"Points batch indices must be >= 0, got minimum {int(batch.min())}")
        self.coords = coords.long()
        self.batch = batch.long()
        self.shape = tuple(int(m) + 1 for m in self.coords.max(0).values)

    @classmethod
    def from_grid(cls, grid: Grid) -> Points:
        """Every token of ``grid`` as a point, in the grid's token order (one scene)."""
        return cls(grid.coords)

    @property
    def ndim(self) -> int:
        return self.coords.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.coords.shape[0]

    @property
    def num_scenes(self) -> int:
        """max(batch) + 1 (scenes without tokens count too)."""
        return int(self.batch.max()) + 1

    def coords_on(self, device: torch.device | str) -> torch.Tensor:
        return self.coords.to(device)

    def scene_tokens(self) -> list[torch.Tensor]:
        """Token indices of every non-empty scene, in token order."""
        return [(self.batch == b).nonzero().squeeze(1) for b in self.batch.unique().tolist()]

    def to(self, device: torch.device | str) -> Points:
        return Points(self.coords.to(device), self.batch.to(device))

    def __repr__(self) -> str:
        return f"Points(N={self.num_tokens}, ndim={self.ndim}, scenes={self.num_scenes})"


class FixedPoints(Points):
    """``Points`` whose patterns' group ids were computed beforehand: the layout an
    exported point model receives as tensors.

    The checks of ``Points``, its extent and the group ids of sorted patterns (sorting,
    unique) depend on the data, so a traced graph cannot compute them; the caller does,
    from a checked ``Points``: ``FixedPoints.of(points, patterns)``, and passes ``coords``
    [N, ndim], ``batch`` [N] and ``groups`` (one LongTensor [N] per pattern ``repr``,
    ``Pattern.group_ids``). Attention over it runs the reference of each partition:
    SDPA under the mask ``ids[i] == ids[j]``.
    """

    def __init__(self, coords: torch.Tensor, batch: torch.Tensor,
                 groups: dict[str, torch.Tensor]) -> None:  # fmt: skip
        self.coords, self.batch, self.groups = coords, batch, dict(groups)
        self.shape = ()  # unknown inside a graph; no partition needs it

    @classmethod
    def of(cls, points: Points, patterns) -> FixedPoints:
        """``points`` with the group ids of every pattern in ``patterns`` (each a partition
        on points: ``group_ids`` not None; raises ``ValueError`` naming one that is not)."""
        groups = {}
        for pattern in patterns:
            pattern.check(points)
            ids = pattern.group_ids(points)
            if ids is None:
                raise ValueError(
                    f"{pattern!r} on points is not a partition into groups (causal masks,"
                    " unions, patterns over new keys): it cannot be exported"
                )
            groups[repr(pattern)] = ids
        return cls(points.coords, points.batch, groups)

    def group_ids_of(self, pattern) -> torch.Tensor:
        """The group ids given for ``pattern``."""
        ids = self.groups.get(repr(pattern))
        if ids is None:
            given = sorted(self.groups)
            raise ValueError(f"FixedPoints has group ids for {given}, not {pattern!r}")
        return ids

    @property
    def num_scenes(self) -> int:  # pragma: no cover - not needed by partitions
        raise ValueError("FixedPoints does not know its scenes inside a graph")

    def to(self, device: torch.device | str) -> FixedPoints:
        groups = {name: ids.to(device) for name, ids in self.groups.items()}
        return FixedPoints(self.coords.to(device), self.batch.to(device), groups)

    def __repr__(self) -> str:
        return f"FixedPoints(ndim={self.ndim}, patterns={sorted(self.groups)})"


def as_points(layout: Grid | Points) -> Points:
    """``layout`` itself if it is ``Points``, else every grid token as a point (one scene)."""
    return layout if isinstance(layout, Points) else Points.from_grid(layout)


def as_layout(layout: Grid | Points | tuple[int, ...] | list[int]) -> Grid | Points:
    """Accept a layout object or a plain shape tuple."""
    if isinstance(layout, (Grid, Points)):
        return layout
    return Grid(layout)
