"""Dense tokenization: N-D patches <-> tokens, for any number of spatial axes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import IntOrTuple, check_int, check_per_axis, per_axis


def _patch(patch: IntOrTuple, ndim: int) -> tuple[int, ...]:
    return per_axis("patch", check_per_axis("patch", patch, minimum=1), ndim)


def patchify(x: torch.Tensor, patch: IntOrTuple) -> torch.Tensor:
    """[B, C, *spatial] -> [B, *grid, C * prod(patch)] with ``grid = ceil(spatial / patch)``.

    Spatial sizes that the patch does not divide are zero-padded at the end of the
    axis (right / bottom / back). Features inside a patch are ordered channel first,
    then patch offsets row-major: the same order as a strided convolution's weight.
    """
    if x.dim() < 3:
        raise ValueError(
            f"patchify expects [B, C, *spatial] with >= 1 spatial axis, got {tuple(x.shape)}"
        )
    ndim = x.dim() - 2
    patch = _patch(patch, ndim)
    spatial = x.shape[2:]
    grid = [-(-s // p) for s, p in zip(spatial, patch, strict=True)]
    pad = [g * p - s for g, p, s in zip(grid, patch, spatial, strict=True)]
    if any(pad):
        x = F.pad(x, [amount for p in reversed(pad) for amount in (0, p)])
    b, c = x.shape[:2]
    x = x.reshape(b, c, *[n for g, p in zip(grid, patch, strict=True) for n in (g, p)])
    order = [0, *range(2, 2 + 2 * ndim, 2), 1, *range(3, 3 + 2 * ndim, 2)]
    return x.permute(order).reshape(b, *grid, c * math.prod(patch))


def unpatchify(
    tokens: torch.Tensor, patch: IntOrTuple, size: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Inverse of ``patchify``: [B, *grid, C * prod(patch)] -> [B, C, *spatial].

    ``size`` crops the result back to the original spatial size (undoing the padding).
    """
    ndim = tokens.dim() - 2
    if ndim < 1:
        raise ValueError(f"unpatchify expects [B, *grid, features], got {tuple(tokens.shape)}")
    patch = _patch(patch, ndim)
    volume = math.prod(patch)
    b, grid, features = tokens.shape[0], tokens.shape[1:-1], tokens.shape[-1]
    if features % volume:
        raise ValueError(
            f"unpatchify: features={features} is not a multiple of prod(patch)={volume}"
            f" (patch {patch}, tokens {tuple(tokens.shape)})"
        )
    c = features // volume
    x = tokens.reshape(b, *grid, c, *patch)
    order = [0, ndim + 1, *[i for a in range(ndim) for i in (1 + a, ndim + 2 + a)]]
    x = x.permute(order).reshape(b, c, *[g * p for g, p in zip(grid, patch, strict=True)])
    if size is not None:
        size = tuple(size)
        if len(size) != ndim or any(s > g * p for s, g, p in zip(size, grid, patch, strict=True)):
            raise ValueError(
                f"unpatchify: size {size} does not fit the padded size {tuple(x.shape[2:])}"
            )
        x = x[(slice(None), slice(None), *[slice(0, s) for s in size])]
    return x


class PatchEmbed(nn.Module):
    """[B, in_chans, *spatial] -> [B, *grid, dim]: non-overlapping N-D patches, linearly embedded.

    Equivalent to a strided convolution with kernel = stride = ``patch`` for any
    ``ndim`` (also 4-D, which PyTorch has no convolution for). Sizes not divisible
    by the patch are zero-padded at the end of each axis (see ``patchify``).
    """

    def __init__(self, in_chans: int, dim: int, patch: IntOrTuple, ndim: int) -> None:
        super().__init__()
        self.in_chans = check_int("PatchEmbed in_chans", in_chans, minimum=1)
        self.ndim = check_int("PatchEmbed ndim", ndim, minimum=1)
        self.patch = _patch(patch, ndim)
        self.proj = nn.Linear(in_chans * math.prod(self.patch), check_int("dim", dim, minimum=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.ndim + 2 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"PatchEmbed expects [B, in_chans={self.in_chans}, {self.ndim} spatial axes],"
                f" got {tuple(x.shape)}"
            )
        return self.proj(patchify(x, self.patch))

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, patch={self.patch}, ndim={self.ndim}"
