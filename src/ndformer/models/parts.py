"""N-D building blocks of the models, on channels-last tokens [B, *grid, C], any ndim."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import DropPath, Mlp
from ..tokens import patchify, unpatchify


class PatchMerging(nn.Module):
    """Halve every grid axis: [B, *grid, C] -> [B, *ceil(grid / 2), out_dim].

    Each 2 x ... x 2 group of tokens is concatenated (odd sizes zero-padded at the
    end), normalised and linearly projected, as Swin's merging layer in N-D.
    """

    def __init__(self, dim: int, out_dim: int, ndim: int) -> None:
        super().__init__()
        self.ndim = ndim
        self.norm = nn.LayerNorm(dim * 2**ndim)
        self.proj = nn.Linear(dim * 2**ndim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(patchify(x.movedim(-1, 1), 2)))


def upsample_nearest(x: torch.Tensor, factor: int, grid: tuple[int, ...]) -> torch.Tensor:
    """[B, *small, C] -> [B, *grid, C]: every token repeated ``factor`` times per axis, cropped.

    Undoes the layout of ``factor = 2**s`` after s ``PatchMerging`` steps: the merged
    token i covers tokens ``factor * i ... factor * (i + 1) - 1`` of the finer grid.
    """
    for axis, size in enumerate(grid, start=1):
        x = x.repeat_interleave(factor, dim=axis).narrow(axis, 0, size)
    return x


class DepthwiseConv(nn.Module):
    """Depthwise N-D convolution, ``kernel`` per axis, zero padding keeping the grid size.

    [B, *grid, C] -> [B, *grid, C]. Written once for every ndim (PyTorch has no 4-D
    convolution): the output is the sum over the ``kernel**ndim`` offsets of the
    shifted input times that offset's per-channel weight.
    """

    def __init__(self, dim: int, kernel: int, ndim: int) -> None:
        super().__init__()
        self.kernel, self.ndim = kernel, ndim
        self.weight = nn.Parameter(torch.randn(kernel**ndim, dim) / math.sqrt(kernel**ndim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = x.shape[1:-1]
        half = self.kernel // 2
        padded = F.pad(x, [0, 0] + [half, half] * self.ndim)
        out = None
        offsets = itertools.product(range(self.kernel), repeat=self.ndim)
        for weight, offset in zip(self.weight, offsets, strict=True):
            window = padded[
                (slice(None), *(slice(o, o + g) for o, g in zip(offset, grid, strict=True)))
            ]
            out = window * weight if out is None else out + window * weight
        return out + self.bias


class ConvBlock(nn.Module):
    """ConvNeXt-style block in N-D: ``x + mlp(norm(depthwise_conv(x)))``."""

    def __init__(self, dim: int, kernel: int, ndim: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.conv = DepthwiseConv(dim, kernel, ndim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm(self.conv(x))))


class Head(nn.Module):
    """Classification (mean over tokens) or dense (per-token logits back to pixels) head.

    ``forward(features [B, *grid, C], size)`` returns [B, classes] or
    [B, classes, *size] (``size`` = input spatial size; the padding is cropped off).
    """

    def __init__(self, dim: int, num_classes: int, kind: str, patch: tuple[int, ...]) -> None:
        super().__init__()
        self.kind, self.patch, self.num_classes = kind, patch, num_classes
        outputs = num_classes * (math.prod(patch) if kind == "segmentation" else 1)
        self.fc = nn.Linear(dim, outputs) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
        if self.kind == "classification":
            return self.fc(x.flatten(1, -2).mean(dim=1))
        return unpatchify(self.fc(x), self.patch, size)
