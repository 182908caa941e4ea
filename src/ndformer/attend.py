"""``attend``: attention under a pattern, dispatched to the fastest exact kernel."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from ._checks import check_per_axis, needs_grad, per_axis
from .kernels import (
    block_sparse_attention,
    block_sparse_plan,
    local_plan,
    reference_attention,
    tiled_attention,
)
from .kernels.flex import flex_attention
from .kernels.groups import group_attention, scene_attention
from .kernels.native import native_attention, native_usable
from .layout import Grid, Points, as_layout
from .patterns import HeadSplit, KeySetPattern, Pattern, Separable
from .patterns import pattern as parse_pattern
from .patterns.axis import AllRule
from .patterns.sorted import SortedGroups, as_points

Backend = Literal["auto", "reference", "tiled", "blocksparse", "flex", "native"]
BACKENDS: tuple[str, ...] = ("auto", "reference", "tiled", "blocksparse", "flex", "native")

#: Default number of query tokens in one N-D tile (about 64**(1/ndim) per axis):
#: 8x8 in 2-D, 4x4x4 in 3-D. Chosen from timings of tile sizes 2..16 (neighborhood(7)
#: on 64x64, neighborhood(5) on 32^3) on a 2-core x86 CPU; ``ndformer bench`` shows the result.
TILE_TOKENS = 64


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Grid) -> None:
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, heads, N, head_dim]; got {shapes}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"q, k and v must have the same batch size; got {shapes}")
    if not (q.shape[1] == k.shape[1] == v.shape[1]):
        raise ValueError(f"q, k and v must have the same number of heads; got {shapes}")
    n = layout.num_tokens
    if not (q.shape[2] == k.shape[2] == v.shape[2] == n):
        raise ValueError(
            f"q, k and v must have N = {n} tokens (the layout {layout.shape} flattened);"
            f" got {shapes}"
        )
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must have the same head_dim; got {shapes}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must have one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"q, k and v must be on one device; got {q.device}, {k.device}, {v.device}"
        )


def _native(q, k, v, pattern: Pattern, layout, scale: float) -> torch.Tensor:
    """backend='native': the native kernels, or a clear error saying why they cannot run."""
    if isinstance(layout, Points) or not isinstance(pattern, Separable):
        raise ValueError(
            f"backend='native' runs separable patterns (windows, neighborhoods, stripes,"
            f" axial) on grids; got {pattern!r} on {layout!r}; use 'auto'"
        )
    reason = native_usable(q, needs_grad(q, k, v))
    if reason is not None:
        raise ValueError(f"backend='native' cannot run here: {reason}; use 'auto'")
    out = native_attention(q, k, v, pattern.axis_rules(layout), layout.shape, scale, force=True)
    if out is None:
        raise ValueError(f"backend='native': {pattern!r} has too many keys per query; use 'auto'")
    return out


def _tile(tile: int | tuple[int, ...] | None, layout: Grid) -> tuple[int, ...]:
    """Query tile length per axis: the given sizes, else about TILE_TOKENS tokens in all."""
    if tile is None:
        tile = max(1, round(TILE_TOKENS ** (1 / layout.ndim)))
    tile = per_axis("tile", check_per_axis("tile", tile, minimum=1), layout.ndim)
    return tuple(min(t, n) for t, n in zip(tile, layout.shape, strict=True))


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | str,
    layout: Grid | Points | tuple[int, ...],
    *,
    scale: float | None = None,
    backend: Backend = "auto",
    tile: int | tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Attention of q over k, v restricted to the pairs ``pattern`` allows on ``layout``.

    Args:
        q, k: [B, heads, N, head_dim]; v: [B, heads, N, head_dim_v], tokens in the
            layout's order (row-major over the grid).
        pattern: a ``Pattern`` or a spec string (``"neighborhood(7)"``).
        layout: a ``Grid`` (or its shape) or sparse ``Points`` with ``num_tokens == N``;
            on points, attention never crosses scenes.
        scale: logit scale, default ``1 / sqrt(head_dim)``.
        backend: ``"auto"`` picks the fast path; ``"tiled"`` (query tiles + key halos
            through SDPA; local separable patterns), ``"blocksparse"`` (any pattern) or
            ``"reference"`` (dense mask: N x N memory, for tests and debugging) or
            ``"flex"`` (PyTorch's compiled FlexAttention for mask patterns on grids:
            fast on CUDA; inference only on CPU; needs a compiler for ``torch.compile``)
            or ``"native"`` (ndformer's compiled CPU kernels for local separable
            patterns, float32/float64, inference only; ``"auto"`` uses them there).
        tile: query tile size per axis (int or tuple) for the fast paths; a tuning
            knob that never changes the result.

    Returns [B, heads, N, head_dim_v], equal to
    ``F.scaled_dot_product_attention(q, k, v, attn_mask=pattern.mask(layout, heads))``.
    """
    layout = as_layout(layout)
    pattern = parse_pattern(pattern)
    _check_inputs(q, k, v, layout)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    pattern.check(layout)
    tiles = _tile(tile, layout)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)

    if isinstance(pattern, KeySetPattern):
        if backend == "reference":
            return pattern.reference(q, k, v, layout, scale)
        if backend != "auto":
            raise ValueError(
                f"{pattern!r} is not a mask pattern: use backend 'auto' or 'reference'"
            )
        return pattern.fast(q, k, v, layout, scale)
    if backend == "flex" and pattern.is_mask:
        if isinstance(layout, Points):
            raise ValueError(f"backend='flex' works on grids; on {layout!r} use 'auto'")
        return flex_attention(q, k, v, pattern, layout, scale)
    if isinstance(pattern, HeadSplit) and (
        backend in ("auto", "tiled", "native") or not pattern.is_mask
    ):
        outputs = []
        for part, (start, stop) in zip(
            pattern.patterns, pattern.head_groups(q.shape[1]), strict=True
        ):
            if stop > start:
                heads = slice(start, stop)
                outputs.append(
                    attend(
                        q[:, heads],
                        k[:, heads],
                        v[:, heads],
                        part,
                        layout,
                        scale=scale,
                        backend=backend,
                        tile=tile,
                    )
                )
        return torch.cat(outputs, dim=1)
    if backend == "reference":
        return reference_attention(q, k, v, pattern, layout, scale)
    if isinstance(layout, Points) or isinstance(pattern, SortedGroups):
        if backend != "auto":
            raise ValueError(
                f"backend {backend!r} works on grids; {pattern!r} on {layout!r} takes"
                " 'auto' (the group / scene kernels) or 'reference'"
            )
        points = as_points(layout)
        groups = pattern.group_ids(points)
        if groups is not None:
            return group_attention(q, k, v, groups.to(q.device), scale)
        return scene_attention(q, k, v, pattern, points, scale)
    if backend == "native":
        return _native(q, k, v, pattern, layout, scale)
    if isinstance(pattern, Separable) and backend in ("auto", "tiled"):
        rules = pattern.axis_rules(layout)
        if backend == "auto" and all(isinstance(r, AllRule) for r in rules):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        if all(r.local for r in rules):
            if backend == "auto" and native_usable(q, needs_grad(q, k, v)) is None:
                out = native_attention(q, k, v, rules, layout.shape, scale)
                if out is not None:
                    return out
            plan = local_plan(rules, layout.shape, tiles, q.device)
            return tiled_attention(q, k, v, plan, scale, layout.shape)
    if backend == "tiled":
        raise ValueError(
            f"backend='tiled' needs a separable pattern with local axes (windows, stripes,"
            f" neighborhoods); {pattern!r} is not one; use 'auto' or 'blocksparse'"
        )
    plan = block_sparse_plan(pattern, layout, tiles, q.shape[1], q.device)
    return block_sparse_attention(q, k, v, plan, scale)
