"""``PointBatch``: several point clouds in one padding-free batch (the input of point models
and what point data sets yield)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PointBatch:
    """Several point clouds in one padding-free batch.

    ``xyz`` float [N, ndim] (metres), ``features`` float [N, C] (e.g. colours in
    [0, 1]; C may be 0), ``batch`` int64 [N]: the scene of every point, 0..scenes-1.
    """

    xyz: torch.Tensor
    features: torch.Tensor
    batch: torch.Tensor

    @classmethod
    def from_scenes(cls, scenes: list[tuple[torch.Tensor, torch.Tensor | None]]) -> PointBatch:
        """Concatenate scenes given as (xyz [n_i, ndim], features [n_i, C] or None)."""
        if not scenes:
            raise ValueError("PointBatch.from_scenes needs at least one scene")
        xyz = torch.cat([torch.as_tensor(x).float() for x, _ in scenes])
        features = torch.cat(
            [torch.zeros(len(x), 0) if f is None else torch.as_tensor(f).float() for x, f in scenes]
        )
        sizes = torch.tensor([len(x) for x, _ in scenes])
        return cls(xyz, features, torch.repeat_interleave(torch.arange(len(scenes)), sizes))

    @property
    def num_scenes(self) -> int:
        return int(self.batch.max()) + 1 if self.batch.numel() else 0

    def __len__(self) -> int:
        return self.xyz.shape[0]

    def to(self, device: torch.device | str) -> PointBatch:
        return PointBatch(self.xyz.to(device), self.features.to(device), self.batch.to(device))
