"""Generated sparse 3-D voxel sets for benchmarks: the surfaces of a furnished room.

Real scans occupy surfaces, not volumes; a benchmark on points should too. These
are made locally from a seed (no downloads).
"""

from __future__ import annotations

import functools
import math

import torch


def _box_surface(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Integer voxels on the surface of the box [lo, hi] (inclusive): [M, 3]."""
    axes = [torch.arange(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    on_face = ((grid == lo) | (grid == hi)).any(-1)
    return grid[on_face]


@functools.lru_cache(maxsize=4)
def surface_voxels(n: int, seed: int = 0) -> torch.Tensor:
    """Exactly ``n`` distinct voxels [n, 3] (int64, >= 0) on the floor, walls and the
    surfaces of random boxes ("furniture") of a room sized to have about 1.5 n surface
    voxels; a seeded random subset of them (so density varies like a scan's)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    gen = torch.Generator().manual_seed(seed)
    side = max(4, math.ceil(math.sqrt(n / 2.4)))
    while True:
        height = max(3, side // 3)
        room = _box_surface(torch.tensor([0, 0, 0]), torch.tensor([side, side, height]))
        room = room[room[:, 2] < height]  # no ceiling: a scan from above sees the floor
        parts = [room]
        for _ in range(max(1, side // 6)):
            size = torch.randint(2, max(3, side // 5), (3,), generator=gen)
            size[2] = min(int(size[2]), height - 1)
            lo = torch.randint(1, max(2, side - int(size.max()) - 1), (3,), generator=gen)
            lo[2] = 0
            parts.append(_box_surface(lo, lo + size))
        voxels = torch.unique(torch.cat(parts), dim=0)
        if len(voxels) >= n:
            pick = torch.randperm(len(voxels), generator=gen)[:n]
            return voxels[pick.sort().values]
        side = math.ceil(side * 1.25)
