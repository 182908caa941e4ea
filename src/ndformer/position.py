"""Position codes: axial N-D rotary embedding (RoPE)."""

from __future__ import annotations

import torch
from torch import nn

from ._cache import plan_cache
from ._checks import check_int
from .layout import grid_coords


class RoPE(nn.Module):
    """Axial N-D rotary position embedding.

    Axis ``a`` gets ``2 * split[a]`` channels (``split`` defaults to ``head_dim // (2 *
    ndim)`` rotation pairs on every axis); on each axis, channel pairs ``(i, i + d/2)``
    (``d`` the axis's channels) rotate by ``position[axis] * base ** (-2i / d)``.
    Channels left over (at the end) pass through unrotated, as in partial-rotary
    transformers, so e.g. head_dim 64 works in 3-D (60 rotated). An uneven ``split``
    gives some axes more frequencies (Volt: 12/12/8 pairs of 32 on x/y/z). After rotating
    queries and keys with their own positions, ``q . k`` depends only on the offset
    between the two positions on every axis. Positions may be integers or floats (e.g.
    scaled coordinates); the module has no parameters.

    Called as ``rope(x, positions)`` with ``x [..., N, head_dim]`` and
    ``positions [N, ndim]`` (or ``x [B, heads, N, head_dim]`` with per-sample
    ``positions [B, N, ndim]``); returns a tensor shaped like ``x``.
    """

    def __init__(
        self,
        head_dim: int,
        ndim: int,
        base: float = 10000.0,
        split: tuple[int, ...] | list[int] | None = None,
    ) -> None:
        super().__init__()
        check_int("RoPE head_dim", head_dim, minimum=1)
        check_int("RoPE ndim", ndim, minimum=1)
        if head_dim < 2 * ndim:
            raise ValueError(
                f"RoPE head_dim={head_dim} is too small for ndim={ndim} axes: every axis needs"
                f" at least one rotation pair, so head_dim must be >= 2 * ndim = {2 * ndim}"
            )
        if not base > 1:
            raise ValueError(f"RoPE base must be > 1, got {base}")
        if split is None:
            split = (head_dim // (2 * ndim),) * ndim
        split = tuple(split)
        if len(split) != ndim:
            raise ValueError(f"RoPE split needs one pair count >= 1 per axis ({ndim}), got {split}")
        for pairs in split:
            check_int("RoPE split", pairs, minimum=1)
        if 2 * sum(split) > head_dim:
            raise ValueError(
                f"RoPE split {split} rotates {2 * sum(split)} channels, more than head_dim ="
                f" {head_dim}"
            )
        self.head_dim, self.ndim, self.base, self.split = head_dim, ndim, float(base), split
        self.even = len(set(split)) == 1
        self.rotated = 2 * sum(split)

    def frequencies(self, device: torch.device, dtype: torch.dtype, axis: int = 0) -> torch.Tensor:
        """Angular frequencies of ``axis``, [split[axis]]."""
        channels = 2 * self.split[axis]
        exponents = torch.arange(0, channels, 2, device=device, dtype=dtype) / channels
        return self.base ** (-exponents)

    def tables(
        self, positions: torch.Tensor, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed_sin) [..., N, rotated] in the compute dtype (at least float32) for
        ``positions`` [N, ndim] or [B, N, ndim]: what ``apply`` rotates with."""
        compute = torch.promote_types(dtype, torch.float32)
        positions = positions.to(device, compute)
        # Tables laid out like the channels, axis after axis, [2, split[a]] each:
        # (first, second) -> (first cos - second sin, second cos + first sin), computed as
        # x * cos + swap(x) * signed_sin with swap exchanging the two halves of each axis.
        cos, sin = [], []
        for axis in range(self.ndim):
            angles = positions[..., axis, None] * self.frequencies(device, compute, axis)
            cos.append(torch.cat((angles.cos(), angles.cos()), dim=-1))
            sin.append(torch.cat((-angles.sin(), angles.sin()), dim=-1))
        return torch.cat(cos, dim=-1), torch.cat(sin, dim=-1)

    def _swap(self, x: torch.Tensor) -> torch.Tensor:
        """The two halves of every axis's channels exchanged (x [..., rotated])."""
        if self.even:
            pairs = self.split[0]
            return x.unflatten(-1, (self.ndim, 2, pairs)).flip(-2).flatten(-3)
        parts, start = [], 0
        for pairs in self.split:
            parts += [x[..., start + pairs : start + 2 * pairs], x[..., start : start + pairs]]
            start += 2 * pairs
        return torch.cat(parts, dim=-1)

    def apply(self, x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Rotate x [..., N, head_dim] (or [B, heads, N, head_dim] with per-sample tables
        [B, N, rotated]) by ``tables``; returns a tensor shaped like ``x``."""
        cos, signed_sin = tables
        if cos.dim() == 3 and x.dim() == 4:  # per-sample positions -> [B, 1, N, rotated]
            cos, signed_sin = cos.unsqueeze(1), signed_sin.unsqueeze(1)
        x_compute = x.to(cos.dtype)
        rotating = x_compute[..., : self.rotated]
        rotated = rotating * cos + self._swap(rotating) * signed_sin
        if self.rotated < self.head_dim:
            rotated = torch.cat((rotated, x_compute[..., self.rotated :]), dim=-1)
        return rotated.to(x.dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.head_dim:
            raise ValueError(
                f"RoPE expects x [..., N, head_dim={self.head_dim}], got x {tuple(x.shape)}"
            )
        batched = positions.dim() == 3 and x.dim() == 4 and positions.shape[0] == x.shape[0]
        if positions.shape[-2:] != (x.shape[-2], self.ndim) or not (
            positions.dim() == 2 or batched
        ):
            raise ValueError(
                f"RoPE positions must be [N, ndim] = [{x.shape[-2]}, {self.ndim}] for x"
                f" {tuple(x.shape)} (or [B, N, ndim] for x [B, heads, N, head_dim]);"
                f" got positions {tuple(positions.shape)}"
            )
        return self.apply(x, self.tables(positions, x.device, x.dtype))

    def extra_repr(self) -> str:
        split = "" if self.even else f", split={self.split}"
        return f"head_dim={self.head_dim}, ndim={self.ndim}, base={self.base:g}{split}"


@plan_cache(64)
def _grid_tables(head_dim, ndim, base, split, shape, device, dtype):
    rope = RoPE(head_dim, ndim, base, split)
    return rope.tables(grid_coords(shape, device), device, dtype)


def rope_tables(
    rope: RoPE, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rope.tables`` of every token of a grid of ``shape``, cached per (RoPE settings,
    shape, device, dtype): a model's blocks share one table instead of rebuilding it.
    Under ``torch.compile`` the tables are computed in the graph (where they fold)."""
    if torch.compiler.is_compiling():
        axes = [torch.arange(n, device=device) for n in shape]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
        return rope.tables(coords, device, dtype)
    return _grid_tables(rope.head_dim, rope.ndim, rope.base, rope.split, tuple(shape), device,
                        dtype)  # fmt: skip
