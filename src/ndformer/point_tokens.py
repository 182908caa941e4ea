"""Point clouds to tokens and back: volumetric patch tokens (Volume-Transformer style).

``PointTokenizer`` quantizes float points into voxels of ``voxel_size``, groups
voxels into patches of ``patch`` voxels per axis, and makes one token per occupied
patch, embedded from its points (relative offsets and features through a per-point
MLP, max-pooled). Tokens carry integer patch coordinates in a ``Points`` layout, so
every pattern and RoPE work on them. ``detokenize`` gives every point its token's
feature plus an embedding of its offset inside the patch, for per-point heads.
``PatchGrid`` (voxels, patches, input checks) is shared with Volt's linear tokenizer,
``models.voxel_tokens.VoxelTokenizer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import check_int
from .layout import Points
from .point_batch import PointBatch  # noqa: F401  (re-exported: the tokenizer's input)


@dataclass
class PointTokens:
    """The result of tokenizing N points into T tokens."""

    tokens: torch.Tensor  # [T, dim]
    layout: Points  # T tokens: integer patch coordinates and scene index
    point_token: torch.Tensor  # [N]: the token of every point
    offsets: torch.Tensor  # [N, ndim]: position inside the token's patch, in [0, 1)
    point_features: torch.Tensor  # [N, hidden]: every point's own embedding (for skips)


class PatchGrid(nn.Module):
    """What the point tokenizers share: voxels of ``voxel_size`` (each scene shifted to
    start at 0), patches of ``patch`` voxels per axis, ``in_chans`` features per point
    and the checks of their inputs. Holds no parameters."""

    def __init__(self, voxel_size: float, patch: int, in_chans: int, dim: int, ndim: int) -> None:
        super().__init__()
        name = type(self).__name__
        if not voxel_size > 0:
            raise ValueError(f"{name} voxel_size must be > 0, got {voxel_size}")
        check_int(f"{name} patch", patch, minimum=1)
        check_int(f"{name} in_chans", in_chans, minimum=0)
        check_int(f"{name} dim", dim, minimum=1)
        check_int(f"{name} ndim", ndim, minimum=1)
        self.voxel_size, self.patch, self.in_chans, self.dim, self.ndim = (
            float(voxel_size), patch, in_chans, dim, ndim
        )  # fmt: skip

    def _check(self, xyz: torch.Tensor, features, batch) -> torch.Tensor:
        name = type(self).__name__
        if xyz.dim() != 2 or xyz.shape[1] != self.ndim or not xyz.dtype.is_floating_point:
            raise ValueError(
                f"{name} xyz must be float [N, {self.ndim}], got {tuple(xyz.shape)} {xyz.dtype}"
            )
        n = xyz.shape[0]
        if self.in_chans:
            if features is None or features.shape != (n, self.in_chans):
                got = None if features is None else tuple(features.shape)
                raise ValueError(
                    f"{name} features must be [N, in_chans] = [{n}, {self.in_chans}]"
                    f" for xyz {tuple(xyz.shape)}, got {got}"
                )
        elif features is not None and features.shape[-1] != 0:
            raise ValueError(f"{name} has in_chans=0 but got features {features.shape}")
        if batch is None:
            return torch.zeros(n, dtype=torch.long, device=xyz.device)
        if batch.shape != (n,):
            raise ValueError(f"{name} batch must be [N] = [{n}], got {tuple(batch.shape)}")
        return batch.long()

    def scaled(self, xyz: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """Continuous voxel coordinates [N, ndim]: each scene shifted to start at 0, divided
        by ``voxel_size``; ``floor`` gives the voxel of every point."""
        scenes = int(batch.max()) + 1
        lowest = xyz.new_full((scenes, self.ndim), float("inf"))
        index = batch[:, None].expand(-1, self.ndim)
        lowest = lowest.scatter_reduce(0, index, xyz.detach(), "amin")
        return (xyz - lowest[batch]) / self.voxel_size

    def locate(
        self, xyz: torch.Tensor, features: torch.Tensor | None, batch: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Points]:
        """Every point's place, after the input checks: (scaled voxel coordinates [N, ndim]
        (``scaled``), patch_coords [N, ndim] int64, point_token [N]: the index of the
        point's occupied (scene, patch), and the tokens' ``Points`` layout of those
        patches, sorted)."""
        batch = self._check(xyz, features, batch)
        scaled = self.scaled(xyz, batch)
        patch_coords = torch.floor(scaled.detach()).long() // self.patch
        unique, point_token = _unique_rows(torch.cat((batch[:, None], patch_coords), dim=1))
        return scaled, patch_coords, point_token, Points(unique[:, 1:], batch=unique[:, 0])


class PointTokenizer(PatchGrid):
    """Float points [N, ndim] (+ features [N, in_chans]) -> one token per occupied patch.

    Coordinates are shifted per scene so that each scene's minimum is 0, divided by
    ``voxel_size`` and floored to voxels; a token's patch holds ``patch`` voxels per
    axis. Its embedding is ``max`` over its points of ``mlp([offset, features])``
    followed by a linear layer, where ``offset`` in [0, 1)^ndim is the point's place
    inside the patch. ``ndim`` defaults to 3.
    """

    def __init__(
        self,
        voxel_size: float,
        patch: int,
        in_chans: int,
        dim: int,
        ndim: int = 3,
        hidden: int | None = None,
    ) -> None:
        super().__init__(voxel_size, patch, in_chans, dim, ndim)
        hidden = hidden or dim
        self.point_mlp = nn.Sequential(
            nn.Linear(ndim + in_chans, hidden), nn.LayerNorm(hidden), nn.GELU(),
            nn.Linear(hidden, hidden),
        )  # fmt: skip
        self.proj = nn.Linear(hidden, dim)
        self.hidden = hidden
        self.offset_embed = nn.Sequential(
            nn.Linear(ndim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        )  # fmt: skip

    def forward(
        self,
        xyz: torch.Tensor,
        features: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> PointTokens:
        """xyz [N, ndim] float, features [N, in_chans], batch [N] (scene per point)."""
        inputs, point_token, layout = self.assign(xyz, features, batch)
        tokens, per_point = self.embed(inputs, point_token, layout.num_tokens)
        return PointTokens(tokens, layout, point_token, inputs[:, : self.ndim], per_point)

    def assign(
        self,
        xyz: torch.Tensor,
        features: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Points]:
        """The data-dependent half of ``forward`` (no weights): every point's patch.

        Returns (inputs [N, ndim + in_chans]: the point's offset in its patch, in [0, 1),
        then its features; point_token [N]: its token; the tokens' ``Points`` layout)."""
        scaled, patch_coords, point_token, layout = self.locate(xyz, features, batch)
        offsets = (scaled / self.patch - patch_coords.to(xyz.dtype)).clamp(0, 1 - 1e-6)
        inputs = offsets if not self.in_chans else torch.cat((offsets, features), dim=1)
        return inputs, point_token, layout

    def embed(
        self, inputs: torch.Tensor, point_token: torch.Tensor, num_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned half of ``forward``: (tokens [T, dim], every point's embedding
        [N, hidden]) from ``assign``'s inputs [N, ndim + in_chans] and point_token [N]."""
        per_point = self.point_mlp(inputs)  # [N, hidden]
        index = point_token[:, None].expand_as(per_point)
        pooled = per_point.new_full((num_tokens, per_point.shape[1]), float("-inf"))
        pooled = pooled.scatter_reduce(0, index, per_point, "amax", include_self=True)
        return self.proj(pooled), per_point

    def detokenize(self, token_features: torch.Tensor, tokens: PointTokens) -> torch.Tensor:
        """[T, dim] token features -> [N, dim] per-point features: the token's feature plus
        an embedding of the point's offset inside the patch."""
        expected = (tokens.layout.num_tokens, self.dim)
        if token_features.shape != expected:
            raise ValueError(
                f"detokenize needs token features {expected}, got {tuple(token_features.shape)}"
            )
        return self.spread(token_features, tokens.point_token, tokens.offsets)

    def spread(
        self, token_features: torch.Tensor, point_token: torch.Tensor, offsets: torch.Tensor
    ) -> torch.Tensor:
        """``detokenize`` from tensors: [T, dim] -> [N, dim], every point its token's
        (``point_token`` [N]) feature plus an embedding of its ``offsets`` [N, ndim]."""
        return token_features[point_token] + self.offset_embed(offsets)


def _unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(rows, dim=0, return_inverse=True)`` for non-negative int64 rows
    [N, d], through one packed int64 key per row (a 1-D unique is much faster)."""
    extent = (rows.amax(0) + 1).tolist() if len(rows) else [1] * rows.shape[1]
    if math.prod(extent) >= 2**62:  # does not pack: the row-wise unique
        return torch.unique(rows, dim=0, return_inverse=True)
    key = torch.zeros(len(rows), dtype=torch.long, device=rows.device)
    for axis, size in enumerate(extent):
        key = key * size + rows[:, axis]
    packed, inverse = torch.unique(key, return_inverse=True)
    unique = torch.empty(len(packed), rows.shape[1], dtype=torch.long, device=rows.device)
    for axis in reversed(range(rows.shape[1])):
        unique[:, axis] = packed % extent[axis]
        packed = packed // extent[axis]
    return unique, inverse
