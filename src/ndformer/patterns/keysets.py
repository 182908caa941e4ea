"""Patterns that change which keys exist: pooled keys and kernelized linear attention.

They are not masks over the grid's tokens, so ``mask()`` refuses them. Each has a
dense ``reference`` that defines it (N x N or N x blocks memory, for tests and
small inputs); their fast paths live in ``ndformer.kernels.keysets`` and tests hold
the two equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import IntOrTuple, check_per_axis, per_axis
from .._index import row_major_strides
from ..layout import Grid, Points
from ..tokens import patchify
from .base import Pattern, format_call, register
from .compose import HeadSplit
from .local import Window


class KeySetPattern(Pattern):
    """Base of patterns defined by an attention formula rather than a mask."""

    is_mask = False
    #: Whether the pattern has a definition on sparse ``Points``.
    on_points = False

    def check(self, layout: Grid | Points) -> None:
        if isinstance(layout, Points) and not self.on_points:
            raise ValueError(
                f"{self!r} is defined on grids ({self.describe()}); on {layout!r} use pooled,"
                " window, stripe, serialized, flattened or rotated_sets attention"
            )

    def mask_rows(self, layout: Grid, queries: torch.Tensor, heads: int = 1) -> torch.Tensor:
        raise ValueError(
            f"{self!r} is not a mask over the grid's tokens ({self.describe()}); attend()"
            " computes it, and backend='reference' gives its dense definition"
        )

    def describe(self) -> str:
        raise NotImplementedError

    def effective_rows(self, layout: Grid, queries: torch.Tensor, heads: int = 1) -> torch.Tensor:
        # Pooled and linear keys are built from every token: the output depends on all.
        return torch.ones(1, len(queries), layout.num_tokens, dtype=torch.bool)

    def reference(self, q, k, v, layout: Grid, scale: float) -> torch.Tensor:
        """The definition, densely: q, k [B, h, N, E], v [B, h, N, Ev] -> [B, h, N, Ev]."""
        raise NotImplementedError


@register("pooled")
@dataclass(frozen=True, repr=False)
class Pooled(KeySetPattern):
    """Every query attends to the average-pooled keys and values of the non-overlapping
    ``size`` blocks of the grid (PVT's spatial reduction). Border blocks average the
    tokens they have. Exactly ``softmax(q . pool(K)^T * scale) . pool(V)``.

    ``Pooled(cells=c)`` instead pools to at most ``c`` blocks per axis, of size
    ``ceil(n / c)`` on an axis of n tokens (PVTv2's linear spatial reduction): the
    number of pooled keys stays fixed as the grid grows, so the cost is linear in N,
    where a fixed ``size`` costs N^2 / prod(size).
    """

    size: IntOrTuple | None = None
    cells: IntOrTuple | None = None

    def __init__(self, size: IntOrTuple | None = None, *, cells: IntOrTuple | None = None) -> None:
        if (size is None) == (cells is None):
            raise ValueError(
                f"Pooled takes exactly one of size (block size) and cells (blocks per axis);"
                f" got size={size!r}, cells={cells!r}"
            )
        if size is not None:
            object.__setattr__(self, "size", check_per_axis("Pooled size", size, minimum=1))
        else:
            object.__setattr__(self, "cells", check_per_axis("Pooled cells", cells, minimum=1))

    def __repr__(self) -> str:
        if self.cells is not None:
            return format_call("pooled", (), {"cells": self.cells})
        return format_call("pooled", (self.size,))

    def describe(self) -> str:
        if self.cells is not None:
            return f"its keys are averages over {self.cells} blocks per axis"
        return f"its keys are averages over {self.size} blocks"

    def _sizes(self, layout: Grid) -> tuple[int, ...]:
        if self.cells is not None:
            cells = per_axis("Pooled cells", self.cells, layout.ndim)
            return tuple(-(-n // c) for n, c in zip(layout.shape, cells, strict=True))
        return per_axis("Pooled size", self.size, layout.ndim)

    on_points = True

    def check(self, layout: Grid | Points) -> None:
        self._sizes(layout)

    def blocks(self, layout: Grid) -> tuple[int, ...]:
        """Number of blocks per axis."""
        return tuple(-(-n // s) for n, s in zip(layout.shape, self._sizes(layout), strict=True))

    def key_counts(self, layout: Grid, heads: int = 1, rows_per_step: int = 1024) -> torch.Tensor:
        if isinstance(layout, Points):  # the occupied blocks of the query's scene
            _, scene = self.point_blocks(layout)
            return torch.bincount(scene, minlength=layout.num_scenes)[layout.batch].unsqueeze(0)
        return torch.full((1, layout.num_tokens), math.prod(self.blocks(layout)), dtype=torch.long)

    def point_blocks(self, layout: Points) -> tuple[torch.Tensor, torch.Tensor]:
        """On points: the occupied block of every token [N] and the scene of every block
        [M]; blocks are numbered scene by scene (a block never spans two scenes)."""
        sizes = torch.tensor(self._sizes(layout), device=layout.coords.device)
        columns = torch.cat((layout.batch[:, None], layout.coords // sizes), dim=1)
        blocks, of_token = torch.unique(columns, dim=0, return_inverse=True)
        return of_token, blocks[:, 0]

    def effective_rows(self, layout: Grid, queries: torch.Tensor, heads: int = 1) -> torch.Tensor:
        if isinstance(layout, Points):
            return (layout.batch[queries, None] == layout.batch[None, :]).unsqueeze(0)
        return super().effective_rows(layout, queries, heads)

    def block_ids(self, layout: Grid) -> torch.Tensor:
        """[N]: the row-major index of the block each token belongs to."""
        blocks = self.blocks(layout)
        strides = row_major_strides(blocks)
        return (layout.coords // torch.tensor(self._sizes(layout)) * torch.tensor(strides)).sum(-1)

    def pooling_matrix(self, layout: Grid, dtype: torch.dtype, device) -> torch.Tensor:
        """[blocks, N]: row m averages the tokens of block m (the definition of pooling);
        on points, the occupied blocks of every scene."""
        if isinstance(layout, Points):
            ids = self.point_blocks(layout)[0].cpu()
            member = F.one_hot(ids, int(ids.max()) + 1).T.to(dtype)
        else:
            member = F.one_hot(self.block_ids(layout), math.prod(self.blocks(layout))).T.to(dtype)
        return (member / member.sum(-1, keepdim=True)).to(device)

    def reference(self, q, k, v, layout: Grid, scale: float) -> torch.Tensor:
        pool = self.pooling_matrix(layout, q.dtype, q.device)
        scores = (q @ (pool @ k).transpose(-1, -2)) * scale
        if isinstance(layout, Points):  # only the blocks of the query's own scene
            scene = self.point_blocks(layout)[1].to(q.device)
            same = layout.batch.to(q.device)[:, None] == scene[None, :]
            scores = scores.masked_fill(~same, float("-inf"))
        return scores.softmax(-1) @ (pool @ v)

    def pool(self, x: torch.Tensor, layout: Grid) -> torch.Tensor:
        """[B, h, N, E] -> [B, h, blocks, E]: block means, O(N) memory."""
        b, h, _, e = x.shape
        sizes = self._sizes(layout)
        grid_first = x.reshape(b * h, *layout.shape, e).movedim(-1, 1)
        sums = patchify(grid_first, sizes).unflatten(-1, (e, -1)).sum(-1)
        ones = torch.ones(1, 1, *layout.shape, dtype=x.dtype, device=x.device)
        counts = patchify(ones, sizes).sum(-1, keepdim=True)
        return (sums / counts).reshape(b, h, -1, e)


@register("summary")
@dataclass(frozen=True, repr=False)
class Summary(KeySetPattern):
    """One softmax over the keys of the query's own ``Window(window)`` and the pooled
    keys / values of **every** ``block``-sized block (Combiner / FIT style: local detail
    plus summaries of the whole grid). Defined on the duplicated key set
    ``[K; pool(K)]`` with the window mask on the first N keys and every pooled key allowed.
    """

    window: IntOrTuple
    block: IntOrTuple

    def __init__(self, window: IntOrTuple, block: IntOrTuple) -> None:
        object.__setattr__(self, "window", check_per_axis("Summary window", window, minimum=1))
        object.__setattr__(self, "block", check_per_axis("Summary block", block, minimum=1))

    def __repr__(self) -> str:
        return format_call("summary", (self.window, self.block))

    def describe(self) -> str:
        return f"it adds the pooled keys of every {self.block} block to its window's keys"

    def check(self, layout: Grid) -> None:
        super().check(layout)
        per_axis("Summary window", self.window, layout.ndim)
        Pooled(self.block).check(layout)

    def key_counts(self, layout: Grid, heads: int = 1, rows_per_step: int = 1024) -> torch.Tensor:
        local = Window(self.window).key_counts(layout)
        return local + math.prod(Pooled(self.block).blocks(layout))

    def reference(self, q, k, v, layout: Grid, scale: float) -> torch.Tensor:
        pool = Pooled(self.block).pooling_matrix(layout, q.dtype, q.device)
        keys, values = torch.cat((k, pool @ k), dim=-2), torch.cat((v, pool @ v), dim=-2)
        local = Window(self.window).mask(layout).to(q.device)[0]
        allowed = torch.cat((local, local.new_ones(layout.num_tokens, pool.shape[0])), dim=-1)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, scale=scale)


@register("routing")
@dataclass(frozen=True, repr=False)
class Routing(KeySetPattern):
    """BiFormer's bi-level routing. Regions are the ``Window(region)`` blocks; a region's
    descriptor is the mean of its queries (resp. keys); every query of region r attends,
    in one softmax, to all tokens of the ``topk`` regions whose key descriptors have the
    highest dot product with r's query descriptor (ties: lower region index first).
    The selection is data-dependent and gets no gradient; the attention does.
    """

    region: IntOrTuple
    topk: int

    def __init__(self, region: IntOrTuple, topk: int) -> None:
        object.__setattr__(self, "region", check_per_axis("Routing region", region, minimum=1))
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"Routing topk must be an int >= 1, got {topk!r}")
        object.__setattr__(self, "topk", topk)

    def __repr__(self) -> str:
        return format_call("routing", (self.region, self.topk))

    def describe(self) -> str:
        return "its keys depend on the data: the top-k regions of each query's region"

    def region_sizes(self, layout: Grid) -> tuple[int, ...]:
        """Region size per axis on ``layout`` (at most the axis length)."""
        sizes = per_axis("Routing region", self.region, layout.ndim)
        return tuple(min(s, n) for s, n in zip(sizes, layout.shape, strict=True))

    def check(self, layout: Grid) -> None:
        super().check(layout)
        regions = math.prod(Pooled(self.region_sizes(layout)).blocks(layout))
        if self.topk > regions:
            raise ValueError(
                f"Routing topk={self.topk} exceeds the {regions} regions of {self.region}"
                f" on grid {layout.shape}"
            )

    def key_counts(self, layout: Grid, heads: int = 1, rows_per_step: int = 1024) -> torch.Tensor:
        """Upper bound (the selection depends on the data): topk full-size regions, capped at N."""
        per_query = min(layout.num_tokens, self.topk * math.prod(self.region_sizes(layout)))
        return torch.full((1, layout.num_tokens), per_query, dtype=torch.long)

    def select(self, q: torch.Tensor, k: torch.Tensor, layout: Grid) -> torch.Tensor:
        """Routed regions [B, h, regions, topk] (no gradient)."""
        with torch.no_grad():
            pooled = Pooled(self.region_sizes(layout))
            affinity = pooled.pool(q, layout) @ pooled.pool(k, layout).transpose(-1, -2)
            order = torch.sort(affinity, dim=-1, descending=True, stable=True).indices
        return order[..., : self.topk]

    def reference(self, q, k, v, layout: Grid, scale: float) -> torch.Tensor:
        region = Pooled(self.region_sizes(layout)).block_ids(layout).to(q.device)  # [N]
        chosen = self.select(q, k, layout)  # [B, h, R, topk]
        routed = (chosen[..., None] == region).any(-2)  # [B, h, R, N]: region r sees key j
        allowed = routed[:, :, region]  # [B, h, N, N]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)


def _elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1, written as x + 1 (x > 0) and exp(x) (x <= 0): the same values and
    gradients as ``F.elu(x) + 1``, but without elu's backward, whose strides
    torch.compile's AOT autograd mispredicts on transposed heads (its backward graph then
    fails with "view size is not compatible")."""
    return torch.where(x > 0, x + 1, torch.exp(x.clamp(max=0)))


FEATURES = {"elu": _elu_plus_one, "relu": F.relu}


@register("linear")
@dataclass(frozen=True, repr=False)
class Linear(KeySetPattern):
    """Kernelized linear attention (non-causal) with feature map phi = elu + 1 or relu:
    ``out_i = phi(q_i) sum_j phi(k_j) v_j^T / max(phi(q_i) . sum_j phi(k_j), eps)``.

    O(N) time and memory. ``scale`` does not enter (the formula has none); ``eps``
    = 1e-6 only guards the all-zero denominators relu features can produce.
    """

    feature: str = "elu"
    eps = 1e-6

    def __init__(self, feature: str = "elu") -> None:
        if feature not in FEATURES:
            raise ValueError(f"Linear feature must be one of {sorted(FEATURES)}, got {feature!r}")
        object.__setattr__(self, "feature", feature)

    def __repr__(self) -> str:
        return format_call("linear", (self.feature,) if self.feature != "elu" else ())

    def describe(self) -> str:
        return "it weighs every key by a kernel feature product, without a softmax"

    def key_counts(self, layout: Grid, heads: int = 1, rows_per_step: int = 1024) -> torch.Tensor:
        return torch.full((1, layout.num_tokens), layout.num_tokens, dtype=torch.long)

    def forward_flops(self, layout: Grid, heads: int, head_dim: int) -> float:
        """phi(K)^T V and phi(Q) (phi(K)^T V): 2 * N * head_dim**2 each, per head."""
        return 4.0 * layout.num_tokens * head_dim * head_dim * heads

    def reference(self, q, k, v, layout: Grid, scale: float) -> torch.Tensor:
        phi = FEATURES[self.feature]
        weights = phi(q) @ phi(k).transpose(-1, -2)  # [B, h, N, N]
        return (weights @ v) / weights.sum(-1, keepdim=True).clamp_min(self.eps)


@register("hilo")
def HiLo(window: IntOrTuple, alpha: float = 0.5, *, cells: IntOrTuple | None = None) -> Pattern:
    """LITv2's HiLo: ``int(heads * alpha)`` heads attend to ``Pooled(window)`` (low
    frequencies), the rest within ``Window(window)`` (high frequencies). A ``HeadSplit``.

    With ``cells`` the low-frequency heads use ``Pooled(cells=cells)`` instead: a fixed
    number of pooled keys, so the whole split costs time linear in N (the fixed
    ``window`` pooling keeps N / window^d keys: quadratic with a small constant).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"HiLo alpha must be in (0, 1), got {alpha}")
    low = Pooled(window) if cells is None else Pooled(cells=cells)
    return HeadSplit(low, Window(window), fractions=(alpha, 1 - alpha))
