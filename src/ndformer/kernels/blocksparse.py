"""Generic tiled block-sparse attention for any pattern (exact, O(N * tile) memory).

The grid is cut into N-D box tiles. For every query tile the pattern lists the
key tiles holding at least one allowed pair (``geometry.block_any``, computed
from small per-axis tables, never N x N). Attention then runs over those tile
pairs with an exact in-tile mask (``geometry.tile_mask``) and an online
softmax, a few key tiles at a time. The backward pass recomputes the scores
from the saved log-sum-exp (as flash attention does), so neither pass keeps
anything larger than the current chunk of scores, [B, heads, N, chunk keys].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._cache import plan_cache
from ..layout import Grid
from ..patterns import Pattern
from .geometry import TileGeometry, block_any, tile_geometry, tile_mask
from .merge import lse_dtype

#: Key columns processed per step (chunk of key tiles); bounds the score memory.
KEYS_PER_STEP = 256


@dataclass(frozen=True, eq=False)
class BlockSparsePlan:
    """Which key tiles each query tile visits: ``key_tiles [tiles, slots]``, ``key_real``."""

    pattern: Pattern
    geometry: TileGeometry
    heads: int
    key_tiles: torch.Tensor
    key_real: torch.Tensor
    tiles_per_step: int

    @property
    def slots(self) -> int:
        return self.key_tiles.shape[1]

    def step_mask(self, start: int, stop: int) -> torch.Tensor:
        """Mask of slots [start, stop): [1 or heads, tiles, T, (stop - start) * T]."""
        key_tiles = self.key_tiles[:, start:stop]
        tiles, count = key_tiles.shape
        query_tiles = torch.arange(tiles, device=key_tiles.device)[:, None].expand(tiles, count)
        mask = tile_mask(
            self.pattern, self.geometry, query_tiles.flatten(), key_tiles.flatten(), self.heads
        )
        mask = mask & self.key_real[:, start:stop].flatten()[None, :, None, None]
        t = self.geometry.tile_tokens
        groups = mask.shape[0]
        return mask.view(groups, tiles, count, t, t).transpose(2, 3).reshape(groups, tiles, t, -1)


@plan_cache(64)
def block_sparse_plan(
    pattern: Pattern, layout: Grid, tile: tuple[int, ...], heads: int, device: torch.device
) -> BlockSparsePlan:
    geometry = tile_geometry(layout, tile, device)
    active = block_any(pattern, geometry)
    counts = active.sum(dim=1)
    slots = max(int(counts.max()), 1)
    # Active key tiles first, in tile order; the remaining slots are padding.
    order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :slots]
    key_real = torch.arange(slots, device=device)[None, :] < counts[:, None]
    return BlockSparsePlan(
        pattern=pattern,
        geometry=geometry,
        heads=heads,
        key_tiles=order.contiguous(),
        key_real=key_real,
        tiles_per_step=max(1, KEYS_PER_STEP // geometry.tile_tokens),
    )


def _steps(plan: BlockSparsePlan):
    for start in range(0, plan.slots, plan.tiles_per_step):
        stop = min(start + plan.tiles_per_step, plan.slots)
        yield start, stop, plan.key_tiles[:, start:stop], plan.step_mask(start, stop)


def _gather(x: torch.Tensor, key_tiles: torch.Tensor) -> torch.Tensor:
    """x [B, h, tiles, T, E] at key_tiles [tiles, c] -> [B, h, tiles, c*T, E]."""
    b, h, tiles, t, e = x.shape
    flat = x.view(b * h, tiles, t, e).index_select(1, key_tiles.flatten())
    return flat.view(b, h, tiles, -1, e)


def _scatter_add(target: torch.Tensor, key_tiles: torch.Tensor, values: torch.Tensor) -> None:
    """target [B, h, tiles, T, E] += values [B, h, tiles, c*T, E] at key_tiles [tiles, c]."""
    b, h, _, t, e = target.shape
    target.index_add_(2, key_tiles.flatten(), values.reshape(b, h, -1, t, e))


def _scores(q, k_step, mask, scale):
    scores = torch.matmul(q, k_step.transpose(-1, -2)) * scale
    return scores.masked_fill(~mask, float("-inf"))


def _forward(q, k, v, plan: BlockSparsePlan, scale: float):
    b, h, tiles, t, _ = q.shape
    row_max = q.new_full((b, h, tiles, t), float("-inf"))
    row_sum = q.new_zeros((b, h, tiles, t))
    acc = q.new_zeros((b, h, tiles, t, v.shape[-1]))
    for _, _, key_tiles, mask in _steps(plan):
        scores = _scores(q, _gather(k, key_tiles), mask, scale)
        new_max = torch.maximum(row_max, scores.amax(dim=-1))
        safe_max = torch.where(torch.isinf(new_max), 0.0, new_max)
        probs = torch.exp(scores - safe_max[..., None])
        rescale = torch.exp(row_max - safe_max)
        row_sum = row_sum * rescale + probs.sum(dim=-1)
        acc = acc * rescale[..., None] + torch.matmul(probs, _gather(v, key_tiles))
        row_max = new_max
    empty = row_sum == 0
    out = acc / torch.where(empty, 1.0, row_sum)[..., None]
    lse = torch.where(empty, float("inf"), row_max + torch.log(row_sum))
    return out, lse


def _backward(q, k, v, out, lse, grad_out, grad_lse, plan: BlockSparsePlan, scale: float):
    """dq, dk, dv in tile layout from the saved output and log-sum-exp (+inf where a query
    has no keys, so the recomputed probabilities are 0 there)."""
    # d lse / d scores = probs: the log-sum-exp's gradient enters as delta - grad_lse
    delta = (grad_out * out).sum(dim=-1, keepdim=True) - grad_lse[..., None]
    grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for _, _, key_tiles, mask in _steps(plan):
        k_step, v_step = _gather(k, key_tiles), _gather(v, key_tiles)
        probs = torch.exp(_scores(q, k_step, mask, scale) - lse[..., None])
        _scatter_add(grad_v, key_tiles, torch.matmul(probs.transpose(-1, -2), grad_out))
        grad_scores = probs * (torch.matmul(grad_out, v_step.transpose(-1, -2)) - delta)
        grad_q += torch.matmul(grad_scores, k_step) * scale
        _scatter_add(grad_k, key_tiles, torch.matmul(grad_scores.transpose(-1, -2), q) * scale)
    return grad_q, grad_k, grad_v


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _to_tiles(x: torch.Tensor, geometry: TileGeometry, dtype: torch.dtype) -> torch.Tensor:
    """[B, h, N, C] (or [B, h, N]) in token order -> [B, h, tiles, T, C] (or [B, h, tiles, T])."""
    (b, h, n), channels = x.shape[:3], x.shape[3:]
    x = x.to(dtype).reshape(b * h, n, -1).index_select(1, geometry.token_index)
    return x.view(b, h, geometry.num_tiles, geometry.tile_tokens, *channels)


def _from_tiles(x: torch.Tensor, geometry: TileGeometry, shape, dtype) -> torch.Tensor:
    """The inverse of ``_to_tiles``: token order, ``shape`` [B, h, N, ...] and ``dtype``
    (padding slots dropped: every token is read from its own slot)."""
    x = x.reshape(shape[0] * shape[1], geometry.num_tiles * geometry.tile_tokens, -1)
    return x.index_select(1, geometry.inverse).reshape(shape).to(dtype)


def block_sparse_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockSparsePlan, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: [B, heads, N, E]; v: [B, heads, N, Ev] -> out [B, heads, N, Ev] under
    ``plan.pattern`` and the log-sum-exp of every query's allowed scores [B, heads, N].

    Rows without any allowed key produce zeros (dense masked SDPA would give NaN) and a
    log-sum-exp of -inf. Half-precision inputs are computed in float32 and cast back (the
    log-sum-exp stays float32). No autograd: ``block_sparse_backward`` is the backward.
    """
    geometry, dtype = plan.geometry, _compute_dtype(q.dtype)
    out, lse = _forward(*(_to_tiles(x, geometry, dtype) for x in (q, k, v)), plan, scale)
    lse = torch.where(torch.isinf(lse), float("-inf"), lse)
    out = _from_tiles(out, geometry, (*q.shape[:3], v.shape[-1]), q.dtype)
    return out, _from_tiles(lse, geometry, q.shape[:3], lse_dtype(q.dtype))


def block_sparse_backward(
    grad_out: torch.Tensor,
    grad_lse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    plan: BlockSparsePlan,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv (shapes and dtypes of q, k, v) of ``block_sparse_forward`` for the
    gradients of its output and (if given) its log-sum-exp, from the saved output and
    log-sum-exp: scores recomputed a few key tiles at a time, no N x N memory."""
    geometry, dtype = plan.geometry, _compute_dtype(q.dtype)
    tiles = [_to_tiles(x, geometry, dtype) for x in (q, k, v, out, grad_out)]
    lse = _to_tiles(lse, geometry, dtype)
    lse = torch.where(torch.isneginf(lse), float("inf"), lse)  # no keys: probabilities 0
    grad_lse = torch.zeros_like(lse) if grad_lse is None else _to_tiles(grad_lse, geometry, dtype)
    q_t, k_t, v_t, out_t, grad_out_t = tiles
    grads = _backward(q_t, k_t, v_t, out_t, lse, grad_out_t, grad_lse, plan, scale)
    return tuple(_from_tiles(g, geometry, x.shape, x.dtype)
                 for g, x in zip(grads, (q, k, v), strict=True))  # fmt: skip
