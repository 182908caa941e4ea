"""Tiled SDPA: query tiles attend to their key halos, batched over tiles.

Covers every separable pattern whose per-axis rules are local (windows,
stripes, neighborhoods, whole axes). Tokens are gathered into
[tiles, tile_tokens] queries and [tiles, halo_tokens] keys/values, one batched
``scaled_dot_product_attention`` call runs with the per-tile mask (or none when
windows are full), and rows are gathered back. Memory is O(N * halo_tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .tiling import LocalPlan

#: Score elements (rows x tile tokens x halo tokens x tiles) per batched call.
SCORES_PER_CHUNK = 1 << 20


def masked_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v for rows with at least one allowed key.

    On CPU this ran about twice as fast as SDPA with a boolean mask for tile-sized
    problems when it was written (torch 2.13, 2-core x86: [4, 256, 64, 196] scores),
    and autograd keeps only the probabilities.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).masked_fill_(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _block_order(blocks: tuple[tuple[bool, int, int], ...]) -> tuple[list[int], list[int]]:
    """The grid viewed with two dims per axis (as ``blocks`` says), and the permutation of
    those dims that puts every axis' tile dim first, then every in-tile dim."""
    dims, tile_dims, inner_dims = [], [], []
    for a, (strided, tiles, size) in enumerate(blocks):
        dims += [size, tiles] if strided else [tiles, size]
        tile_dims.append(2 * a + (1 if strided else 0))
        inner_dims.append(2 * a + (0 if strided else 1))
    return dims, tile_dims + inner_dims


def block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocks: tuple[tuple[bool, int, int], ...],
    scale: float | None,
) -> torch.Tensor:
    """Attention within the tiles of a regular partition (``LocalPlan.blocks``): q, k
    [B, heads, N, E], v [B, heads, N, Ev] -> [B, heads, N, Ev].

    Each tensor is reordered to [B * heads, tiles, tile_tokens, E] by a view and one
    strided copy (several times faster than a row gather), attended by one batched SDPA
    without a mask, and reordered back the same way.
    """
    batch, heads, n = q.shape[:3]
    dims, order = _block_order(blocks)
    tiles = math.prod(b[1] for b in blocks)
    lead = [0, *(d + 1 for d in order)]  # dims of [rows, *grid dims, E]

    def to_tiles(x: torch.Tensor) -> torch.Tensor:
        grid = x.reshape(batch * heads, *dims, x.shape[-1])
        return grid.permute(*lead, len(dims) + 1).reshape(batch * heads, tiles, -1, x.shape[-1])

    out = F.scaled_dot_product_attention(to_tiles(q), to_tiles(k), to_tiles(v), scale=scale)
    sizes = [dims[d] for d in order]
    back = [0] * len(lead)
    for position, dim in enumerate(lead):
        back[dim] = position
    grid = out.reshape(batch * heads, *sizes, v.shape[-1]).permute(*back, len(dims) + 1)
    return grid.reshape(batch, heads, n, v.shape[-1])


def strided_tiles(
    x: torch.Tensor, affine: tuple[tuple[int, int, int, int, int], ...], shape: tuple[int, ...]
) -> torch.Tensor:
    """x [rows, N, E] (row-major grid tokens) -> [rows, tiles, slots, E]: the tokens at
    ``start + t * tile_step + s * slot_step`` per axis, through one strided view and a copy."""
    x = x.contiguous()
    rows, n, e = x.shape
    token_strides = [math.prod(shape[a + 1 :]) for a in range(len(shape))]
    sizes = [rows, *(a[3] for a in affine), *(a[4] for a in affine), e]
    strides = [
        n * e,
        *(a[1] * st * e for a, st in zip(affine, token_strides, strict=True)),
        *(a[2] * st * e for a, st in zip(affine, token_strides, strict=True)),
        1,
    ]
    offset = x.storage_offset() + e * sum(
        a[0] * st for a, st in zip(affine, token_strides, strict=True)
    )
    tiles = math.prod(a[3] for a in affine)
    return x.as_strided(sizes, strides, offset).reshape(rows, tiles, -1, e)


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: LocalPlan,
    scale: float | None,
    shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """q, k: [B, heads, N, E]; v: [B, heads, N, Ev] -> [B, heads, N, Ev].

    Masked tiles are processed in chunks of at most ``SCORES_PER_CHUNK`` score
    elements, which bounds the temporary memory of inference and keeps it in the
    allocator's reuse range instead of mapping fresh pages on every call. With the
    grid ``shape``, parts whose tiles are affine on every axis are gathered by strided
    views (whole, then sliced per chunk) instead of row gathers.
    """
    if plan.blocks is not None:
        return block_attention(q, k, v, plan.blocks, scale)
    batch, heads, n = q.shape[:3]
    rows = batch * heads
    # [rows, N, d] views: index_select along a middle axis of a 4-D tensor measured
    # several times slower than along axis 1 of the 3-D view.
    q, k, v = (x.reshape(rows, n, x.shape[-1]) for x in (q, k, v))
    outputs = []
    for part in plan.parts:
        t, h = part.tile_tokens, part.halo_tokens
        # Unmasked parts go to SDPA's own memory-efficient kernels in one call.
        step = part.num_tiles if part.mask is None else max(1, SCORES_PER_CHUNK // (rows * t * h))
        whole = {}
        if shape is not None and part.query_affine is not None:
            whole["q"] = strided_tiles(q, part.query_affine, shape)
        if shape is not None and part.key_affine is not None:
            whole["k"] = strided_tiles(k, part.key_affine, shape)
            whole["v"] = strided_tiles(v, part.key_affine, shape)
        for start in range(0, part.num_tiles, step):
            stop = min(start + step, part.num_tiles)

            def gather(name, x, index, size, start=start, stop=stop, whole=whole):
                if name in whole:
                    return whole[name][:, start:stop]
                index = index[start * size : stop * size]
                return x.index_select(1, index).view(rows, stop - start, size, x.shape[-1])

            args = (
                gather("q", q, part.query_index, t),
                gather("k", k, part.key_index, h),
                gather("v", v, part.key_index, h),
            )
            mask = None if part.mask is None else part.mask[start:stop]
            if mask is not None and q.device.type == "cpu":
                out = masked_softmax_attention(*args, mask, scale)
            else:
                out = F.scaled_dot_product_attention(*args, attn_mask=mask, scale=scale)
            outputs.append(out.reshape(rows, -1, v.shape[-1]))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return out.index_select(1, plan.output_index).view(batch, heads, n, v.shape[-1])
