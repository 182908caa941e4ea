"""Tiled SDPA: query tiles attend to their key halos, batched over tiles.

Covers every separable pattern whose per-axis rules are local (windows,
stripes, neighborhoods, whole axes). Tokens are gathered into
[tiles, tile_tokens] queries and [tiles, halo_tokens] keys/values, one batched
``scaled_dot_product_attention`` call runs with the per-tile mask (or none when
windows are full), and rows are gathered back. Memory is O(N * halo_tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import LocalPlan


def masked_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v for rows with at least one allowed key.

    On CPU this is about twice as fast as SDPA with a boolean mask for tile-sized
    problems (measured with benchmarks/core_speed.py), and autograd keeps only the
    probabilities.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).masked_fill_(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def tiled_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: LocalPlan, scale: float | None
) -> torch.Tensor:
    """q, k: [B, heads, N, E]; v: [B, heads, N, Ev] -> [B, heads, N, Ev]."""
    batch, heads = q.shape[:2]
    tiles = (batch * heads, plan.num_tiles)

    def gather(x: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
        return x.index_select(2, index).view(*tiles, size, x.shape[-1])

    args = (
        gather(q, plan.query_index, plan.tile_tokens),
        gather(k, plan.key_index, plan.halo_tokens),
        gather(v, plan.key_index, plan.halo_tokens),
    )
    if plan.mask is not None and q.device.type == "cpu":
        out = masked_softmax_attention(*args, plan.mask, scale)
    else:
        out = F.scaled_dot_product_attention(*args, attn_mask=plan.mask, scale=scale)
    out = out.reshape(batch, heads, plan.num_tiles * plan.tile_tokens, v.shape[-1])
    return out.index_select(2, plan.output_index)
