"""N-D building blocks of the models, on channels-last tokens [B, *grid, C], any ndim."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import DropPath, Mlp
from ..tokens import patchify, unpatchify


def merge_axes(name: str, axes: object, ndim: int) -> tuple[int, ...]:
    """The axes a merging step halves: ``None`` -> every axis, else ``axes`` checked to
    be distinct ints of ``0..ndim - 1`` (at least one), as a sorted tuple."""
    if axes is None:
        return tuple(range(ndim))
    valid = isinstance(axes, (list, tuple)) and len(axes) > 0
    valid = valid and all(isinstance(a, int) and not isinstance(a, bool) for a in axes)
    if not valid or len(set(axes)) != len(axes) or not set(axes) <= set(range(ndim)):
        raise ValueError(
            f"{name} must be None (every axis) or distinct axes of 0..{ndim - 1}, got {axes!r}"
        )
    return tuple(sorted(axes))


class PatchMerging(nn.Module):
    """Halve the grid axes ``axes`` (default: every axis): [B, *grid, C] ->
    [B, *merged, out_dim] with ``merged[a] = ceil(grid[a] / 2)`` for ``a`` in ``axes``
    and ``grid[a]`` on the others.

    Each group of 2 tokens per merged axis (``2**len(axes)`` tokens) is concatenated
    (odd sizes zero-padded at the end), normalised and linearly projected: Swin's
    merging layer in N-D; ``axes=(0, 1, 2)`` on [x, y, z, t] merges in space only
    (SwiFT).
    """

    def __init__(
        self, dim: int, out_dim: int, ndim: int, axes: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        self.ndim = ndim
        self.axes = merge_axes("PatchMerging axes", axes, ndim)
        self.patch = tuple(2 if a in self.axes else 1 for a in range(ndim))
        self.norm = nn.LayerNorm(dim * 2 ** len(self.axes))
        self.proj = nn.Linear(dim * 2 ** len(self.axes), out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(patchify(x.movedim(-1, 1), self.patch)))


def upsample_nearest(
    x: torch.Tensor, factor: int | tuple[int, ...], grid: tuple[int, ...]
) -> torch.Tensor:
    """[B, *small, C] -> [B, *grid, C]: every token repeated ``factor`` times per axis
    (an int for every axis or one per axis), cropped to ``grid``.

    Undoes the layout of ``factor = 2**s`` after s ``PatchMerging`` steps (1 on the axes
    they do not merge): the merged token i covers tokens ``factor * i ... factor * (i +
    1) - 1`` of the finer grid.
    """
    factors = factor if isinstance(factor, tuple) else (factor,) * len(grid)
    for axis, (size, f) in enumerate(zip(grid, factors, strict=True), start=1):
        x = x.repeat_interleave(f, dim=axis).narrow(axis, 0, size)
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

    def forward_flops(self, args, output: torch.Tensor) -> float:
        """FLOPs of a forward (a multiply-add per offset and output value), for the arena."""
        return 2.0 * output.numel() * self.kernel**self.ndim

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
