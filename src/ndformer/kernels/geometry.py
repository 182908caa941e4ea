"""The box tiling of the block-sparse kernel: which tile pairs a pattern touches, and
the exact mask inside a tile pair.

Everything here is N-D by construction: per-axis pieces (a few small 1-D tables) are
combined across axes with ``axis_outer``, so no code path is written for a particular
number of dimensions and no N x N tensor is built. ``block_any`` and ``tile_mask``
read a pattern's definition (its per-axis rules, how its parts combine); the patterns
themselves know nothing of tiles.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._cache import plan_cache
from .._index import axis_outer, flat_index
from ..layout import Grid
from ..patterns import HeadSplit, Intersection, Pattern, Separable, Union
from ..patterns.axis import AxisRule


def row_of_token(gather_index: torch.Tensor, real: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Invert a tiling's gather: each token's row among the gathered rows.

    ``gather_index [rows]`` gives each row's token; ``real [rows]`` is False for padding
    rows (repeats of a token that has its own real row). Every token must have exactly
    one real row. Returns [num_tokens].
    """
    rows = torch.empty(num_tokens, dtype=torch.long, device=gather_index.device)
    rows[gather_index[real]] = torch.nonzero(real).flatten()
    return rows


# ---------------------------------------------------------------------------
# Box tiling for the generic block-sparse kernel
# ---------------------------------------------------------------------------
@plan_cache(512)
def _axis_table(rule: AxisRule, length: int, tile: int, device: torch.device) -> torch.Tensor:
    """Rule on the padded axis as [blocks, blocks, tile, tile]; padding rows/columns False."""
    blocks = -(-length // tile)
    pos = torch.arange(blocks * tile)
    real = pos < length
    c = pos.clamp(max=length - 1)
    rel = rule.allowed(c[:, None], c[None, :], length) & real[:, None] & real[None, :]
    return rel.view(blocks, tile, blocks, tile).permute(0, 2, 1, 3).contiguous().to(device)


@dataclass(frozen=True, eq=False)
class TileGeometry:
    """A grid cut into N-D box tiles of shape ``tile`` (the grid is padded to whole tiles).

    ``token_index [num_tiles * tile_tokens]`` gathers tokens into tile order (padding
    slots repeat a real token); ``inverse [N]`` is each token's slot in that order;
    ``tile_coords [num_tiles, ndim]`` are the tiles' block coordinates.
    """

    layout: Grid
    tile: tuple[int, ...]
    device: torch.device
    token_index: torch.Tensor
    inverse: torch.Tensor
    tile_coords: torch.Tensor
    num_tiles: int
    tile_tokens: int

    def _tables(self, rules: Sequence[AxisRule]) -> list[torch.Tensor]:
        return [
            _axis_table(r, n, t, self.device)
            for r, n, t in zip(rules, self.layout.shape, self.tile, strict=True)
        ]

    def block_any(self, rules: Sequence[AxisRule]) -> torch.Tensor:
        """[num_tiles, num_tiles] bool, exact for a separable pattern."""
        return axis_outer([t.any(-1).any(-1) for t in self._tables(rules)], operator.and_)

    def tile_mask(
        self, rules: Sequence[AxisRule], q_tiles: torch.Tensor, k_tiles: torch.Tensor
    ) -> torch.Tensor:
        """[M, tile_tokens, tile_tokens] bool mask between tile pairs (q_tiles[m], k_tiles[m])."""
        q, k = self.tile_coords[q_tiles], self.tile_coords[k_tiles]
        parts = [t[q[:, a], k[:, a]] for a, t in enumerate(self._tables(rules))]
        return axis_outer(parts, operator.and_, lead=1)


@plan_cache(64)
def tile_geometry(layout: Grid, tile: tuple[int, ...], device: torch.device) -> TileGeometry:
    shape = layout.shape
    blocks = [-(-n // t) for n, t in zip(shape, tile, strict=True)]
    # Per axis: [blocks, tile] coordinates of each slot, padding clamped to the last real one.
    positions = [
        torch.arange(b * t, device=device).view(b, t) for b, t in zip(blocks, tile, strict=True)
    ]
    slots = [p.clamp(max=n - 1) for p, n in zip(positions, shape, strict=True)]
    token_index = flat_index(slots, shape).flatten()
    real = axis_outer([p < n for p, n in zip(positions, shape, strict=True)], operator.and_)
    inverse = row_of_token(token_index, real.flatten(), layout.num_tokens)
    grids = torch.meshgrid(*[torch.arange(b, device=device) for b in blocks], indexing="ij")
    tile_coords = torch.stack(grids, dim=-1).reshape(-1, len(shape))
    return TileGeometry(
        layout=layout,
        tile=tile,
        device=device,
        token_index=token_index,
        inverse=inverse,
        tile_coords=tile_coords,
        num_tiles=math.prod(blocks),
        tile_tokens=math.prod(tile),
    )


def block_any(pattern: Pattern, geometry: TileGeometry) -> torch.Tensor:
    """Bool [num_tiles, num_tiles]: does query tile i have any allowed key in key tile j?

    Exact for separable patterns and unions; an intersection's AND of its parts' maps can
    over-approximate (a True with no allowed pair only costs time); never misses a pair.
    """
    if isinstance(pattern, Separable):
        return geometry.block_any(pattern.axis_rules(geometry.layout))
    if isinstance(pattern, Union | Intersection):
        return pattern.fold([block_any(p, geometry) for p in pattern.parts])
    if isinstance(pattern, HeadSplit):
        return functools.reduce(operator.or_, [block_any(p, geometry) for p in pattern.patterns])
    raise ValueError(f"the block-sparse kernel takes mask patterns; {pattern!r} is not one")


def tile_mask(
    pattern: Pattern,
    geometry: TileGeometry,
    q_tiles: torch.Tensor,
    k_tiles: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """Exact mask between query tile ``q_tiles[m]`` and key tile ``k_tiles[m]``: bool
    [1 or heads, M, tile_tokens, tile_tokens]; padding keys are False."""
    if isinstance(pattern, Separable):
        rules = pattern.axis_rules(geometry.layout)
        return geometry.tile_mask(rules, q_tiles, k_tiles).unsqueeze(0)
    if isinstance(pattern, Union | Intersection):
        parts = [tile_mask(p, geometry, q_tiles, k_tiles, heads) for p in pattern.parts]
        return pattern.fold(parts)
    if isinstance(pattern, HeadSplit):
        return pattern.stack_heads(heads, lambda p, h: tile_mask(p, geometry, q_tiles, k_tiles, h))
    raise ValueError(f"the block-sparse kernel takes mask patterns; {pattern!r} is not one")
