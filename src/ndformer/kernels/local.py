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

from .tiling import LocalPlan


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
    outputs = []
    for part in plan.parts:
        tiles = (batch * heads, part.num_tiles)

        def gather(x: torch.Tensor, index: torch.Tensor, size: int, tiles=tiles) -> torch.Tensor:
            return x.index_select(2, index).view(*tiles, size, x.shape[-1])

        args = (
            gather(q, part.query_index, part.tile_tokens),
            gather(k, part.key_index, part.halo_tokens),
            gather(v, part.key_index, part.halo_tokens),
        )
        if part.mask is not None and q.device.type == "cpu":
            out = masked_softmax_attention(*args, part.mask, scale)
        else:
            out = F.scaled_dot_product_attention(*args, attn_mask=part.mask, scale=scale)
        outputs.append(out.reshape(batch, heads, -1, v.shape[-1]))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return out.index_select(2, plan.output_index)
