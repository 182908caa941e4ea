"""N-D helpers shared by the tilings, and the box tiling of the block-sparse kernel.

Everything here is N-D by construction: per-axis pieces (a few small 1-D
tables) are combined across axes with ``axis_outer``, so no code path is
written for a particular number of dimensions and no N x N tensor is built.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .._cache import plan_cache
from ..layout import Grid
from ..patterns.axis import AxisRule


def axis_outer(
    parts: Sequence[torch.Tensor],
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lead: int = 0,
) -> torch.Tensor:
    """Combine one tensor per axis into their outer product under ``op``.

    ``parts[a]`` has shape ``[*lead_dims, d_a^1, ..., d_a^k]``; the result has shape
    ``[*lead_dims, prod_a d_a^1, ..., prod_a d_a^k]`` where each product dimension is
    flattened row-major over axes (axis 0 slowest), i.e. the token order of a grid.
    ``lead_dims`` are shared (broadcast), not combined.
    """
    n = len(parts)
    k = parts[0].dim() - lead
    result = None
    for axis, part in enumerate(parts):
        shape = list(part.shape[:lead]) + [1] * (n * k)
        for j in range(k):
            shape[lead + j * n + axis] = part.shape[lead + j]
        view = part.reshape(shape)
        result = view if result is None else op(result, view)
    lead_shape = list(result.shape[:lead])
    sizes = [math.prod(p.shape[lead + j] for p in parts) for j in range(k)]
    full = lead_shape + [p.shape[lead + j] for j in range(k) for p in parts]
    return result.expand(full).reshape(lead_shape + sizes)


def flat_index(per_axis: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    """Row-major token index from per-axis coordinate tensors combined by ``axis_outer``."""
    strides = [math.prod(shape[a + 1 :]) for a in range(len(shape))]
    return axis_outer([c * s for c, s in zip(per_axis, strides, strict=True)], operator.add)


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
