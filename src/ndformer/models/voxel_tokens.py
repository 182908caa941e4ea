"""Volt's own tokenizer and upsampling (``VoltConfig(tokenizer="linear")``), on points.

The Volume Transformer (Volt, arXiv 2604.19609) embeds every volumetric patch with a
*linear tokenizer* (a convolution with kernel = stride = ``patch`` over the voxel
grid) and maps the latent tokens back to voxel resolution with *one transposed
convolution* (kernel = stride = ``patch``). Both are computed here on the occupied
patches only, with no dense scene grid, for any ``ndim``:

- ``VoxelTokenizer``: points -> voxels of ``voxel_size`` (each voxel's feature: the mean
  of its points' inputs, then an occupancy channel 1) -> one token per occupied patch,
  ``Linear`` over the patch's ``patch^ndim x (C + 1)`` voxel features (empty voxels 0);
- ``VoxelUpsample``: tokens [T, dim] -> per point [N, width]: a pointwise reduction to
  ``width`` channels, the transposed convolution (every voxel ``v`` of a token's patch
  gets ``W_v h + b``), and every point reads its voxel's vector.

A point's voxel travels as one int64, ``point_voxel = token * patch^ndim + cell``, where
``cell`` is the voxel's row-major index inside its patch (the last axis fastest).
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int
from ..layout import Points
from ..point_tokens import PatchGrid


class VoxelTokenizer(PatchGrid):
    """Points -> one token per occupied patch, through Volt's linear tokenizer.

    ``assign`` finds every point's voxel (each scene shifted to start at 0, divided by
    ``voxel_size``, floored) and patch; ``embed`` averages the points' inputs [N, C] in
    each voxel, appends an occupancy channel (1 in occupied voxels, 0 elsewhere) and
    applies ``proj``, a ``Linear`` over each patch's voxel features flattened as
    [patch^ndim cells (row-major), C + 1 channels]: ``proj.weight`` viewed as
    [dim, *patch_shape, C + 1] and moved to [dim, C + 1, *patch_shape] is the kernel of the
    equivalent ``conv{ndim}d`` with stride ``patch``. Memory: T x patch^ndim x (C + 1).
    """

    def __init__(
        self, voxel_size: float, patch: int, in_chans: int, dim: int, ndim: int = 3
    ) -> None:
        super().__init__(voxel_size, patch, in_chans, dim, ndim)
        self.cells = patch**ndim
        self.proj = nn.Linear(self.cells * (in_chans + 1), dim)

    def forward(
        self,
        xyz: torch.Tensor,
        features: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Points]:
        """(tokens [T, dim], point_voxel [N], layout) from xyz [N, ndim] float, features
        [N, in_chans] and batch [N] (scene per point)."""
        inputs, point_voxel, layout = self.assign(xyz, features, batch)
        return self.embed(inputs, point_voxel, layout.num_tokens), point_voxel, layout

    def assign(
        self,
        xyz: torch.Tensor,
        features: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Points]:
        """The data-dependent half (no weights): (inputs [N, in_chans], the features;
        point_voxel [N] int64, ``token * patch^ndim + cell``; the tokens' ``Points``
        layout: integer patch coordinates and scenes, sorted)."""
        scaled, patch_coords, point_token, layout = self.locate(xyz, features, batch)
        within = torch.floor(scaled.detach()).long() - patch_coords * self.patch
        cell = torch.zeros_like(point_token)
        for axis in range(self.ndim):
            cell = cell * self.patch + within[:, axis]
        inputs = features if self.in_chans else xyz.new_zeros(len(xyz), 0)
        return inputs, point_token * self.cells + cell, layout

    def voxel_features(
        self, inputs: torch.Tensor, point_voxel: torch.Tensor, num_tokens: int
    ) -> torch.Tensor:
        """[T, patch^ndim, C + 1]: every voxel of every token's patch, the mean of its
        points' ``inputs`` [N, C] and then its occupancy (0 and all zeros when empty)."""
        summed = torch.cat((inputs, inputs.new_ones(len(inputs), 1)), dim=1)
        sums = inputs.new_zeros(num_tokens * self.cells, summed.shape[1])
        sums = sums.index_add(0, point_voxel, summed)
        count = sums[:, -1:]
        mean = sums[:, :-1] / count.clamp_min(1)
        voxels = torch.cat((mean, (count > 0).to(mean.dtype)), dim=1)
        return voxels.view(num_tokens, self.cells, summed.shape[1])

    def embed(
        self, inputs: torch.Tensor, point_voxel: torch.Tensor, num_tokens: int
    ) -> torch.Tensor:
        """The learned half: tokens [T, dim] from ``assign``'s inputs and point_voxel."""
        return self.proj(self.voxel_features(inputs, point_voxel, num_tokens).flatten(1))


class VoxelUpsample(nn.Module):
    """Tokens [T, dim] -> per-point features [N, width]: Volt's decoder, LayerNorm in
    place of its BatchNorm.

    ``reduce`` (GELU, Linear dim -> width without bias, LayerNorm, GELU) acts on every
    token; ``transposed`` is the transposed convolution with kernel = stride = ``patch``
    (``deconv.weight`` [patch^ndim * width, width] viewed as [*patch_shape, width_out,
    width_in] and moved to [width_in, width_out, *patch_shape] is its kernel; ``bias``
    [width] is shared by every voxel, as in ``conv_transpose{ndim}d``); ``post`` is
    LayerNorm then GELU on every point's vector. Memory: every voxel of every token's
    patch, T x patch^ndim x width values (Volt-S's patch 5 and width 128: 64 kB a token
    in float32, so 1,000 tokens take 64 MB, and as much again for their gradient).
    """

    def __init__(self, dim: int, width: int, patch: int, ndim: int = 3) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("width", width), ("patch", patch), ("ndim", ndim)):
            check_int(f"VoxelUpsample {name}", value, minimum=1)
        self.width, self.cells = width, patch**ndim
        self.reduce = nn.Sequential(
            nn.GELU(), nn.Linear(dim, width, bias=False), nn.LayerNorm(width), nn.GELU()
        )
        self.deconv = nn.Linear(width, self.cells * width, bias=False)
        self.bias = nn.Parameter(torch.zeros(width))
        self.post = nn.Sequential(nn.LayerNorm(width), nn.GELU())

    def transposed(self, tokens: torch.Tensor, point_voxel: torch.Tensor) -> torch.Tensor:
        """The transposed convolution read at every point's voxel: tokens [T, width] ->
        [N, width], point n gets ``W_cell h_token + bias`` (``point_voxel`` [N] int64 =
        token * patch^ndim + cell)."""
        every_voxel = self.deconv(tokens).view(-1, self.width)  # [T * patch^ndim, width]
        return every_voxel[point_voxel] + self.bias

    def forward(self, tokens: torch.Tensor, point_voxel: torch.Tensor) -> torch.Tensor:
        """Per-point features [N, width] from tokens [T, dim] and point_voxel [N]."""
        return self.post(self.transposed(self.reduce(tokens), point_voxel))


def default_upsample_dim(dim: int) -> int:
    """Volt's transposed-convolution width: a third of the model width (Volt-S 384 -> 128,
    Volt-B 768 -> 256), at least 1."""
    return max(1, dim // 3)
