"""Kernels for sparse ``Points``: attention within groups, and per scene under a mask.

``group_attention`` serves every pattern whose relation is "same group" (Full,
Window, Stripe and their intersections on points, Serialized, Flattened, RotatedSets): tokens
are gathered into groups, groups of similar size are padded to one length and go
through batched SDPA together, and outputs are scattered back. Time and memory are
linear in N for bounded groups; no N x N tensor exists.

``scene_attention`` serves the other mask patterns on points (Causal, unions):
per scene, query rows in chunks under the pattern's own mask rows; memory
O(rows x scene size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import Points
from ..patterns import Pattern

#: Groups longer than this run one exact SDPA each (no padding, no mask).
LONG_GROUP = 2048
#: Groups at least this long go through fused SDPA with a key-padding mask.
FUSED_GROUP = 256
#: Score elements (batch x heads x groups x length x length) per padded SDPA call.
CHUNK_ELEMENTS = 2**24


def _padded_length(counts: torch.Tensor) -> torch.Tensor:
    """Length each group is padded to: a multiple of 1/8 of its power-of-two ceiling
    (at most 12.5% padding), at least 8."""
    ceiling = torch.pow(2, torch.ceil(torch.log2(counts.double().clamp_min(8)))).long()
    quantum = (ceiling // 8).clamp_min(1)
    return ((counts + quantum - 1) // quantum * quantum).clamp_min(8)


def group_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention where token i attends token j iff ``groups[i] == groups[j]``.

    q, k [B, h, N, E], v [B, h, N, Ev], groups [N] (any integer ids) -> [B, h, N, Ev].
    """
    n = q.shape[2]
    order = torch.argsort(groups, stable=True)
    _, counts = torch.unique_consecutive(groups[order], return_counts=True)
    starts = counts.cumsum(0) - counts
    padded = _padded_length(counts)
    indices, outputs = [], []
    for length in padded.unique().tolist():
        chosen = (padded == length).nonzero().squeeze(1)
        if length > LONG_GROUP:
            for g in chosen.tolist():
                idx = order[starts[g] : starts[g] + counts[g]]
                out = F.scaled_dot_product_attention(
                    q[:, :, idx], k[:, :, idx], v[:, :, idx], scale=scale
                )
                indices.append(idx)
                outputs.append(out)
            continue
        slots = torch.arange(length, device=q.device)
        valid = slots < counts[chosen, None]  # [S, length]
        idx = order[(starts[chosen, None] + slots).clamp_max(n - 1)]
        idx = torch.where(valid, idx, idx[:, :1])  # padding repeats a real token of the group
        per_group = q.shape[0] * q.shape[1] * length * length
        step = max(1, CHUNK_ELEMENTS // per_group)
        for lo in range(0, len(chosen), step):
            i, ok = idx[lo : lo + step], valid[lo : lo + step]
            if length >= FUSED_GROUP:  # long groups: fused SDPA, no score tensor kept
                mask = None if bool(ok.all()) else ok[:, None, :]  # keys: real tokens only
                out = F.scaled_dot_product_attention(
                    q[:, :, i], k[:, :, i], v[:, :, i], attn_mask=mask, scale=scale
                )
            else:  # small batched matmuls beat SDPA's per-call overhead on short groups
                scores = (q[:, :, i] @ k[:, :, i].transpose(-1, -2)) * scale  # [B, h, S, L, L]
                if not bool(ok.all()):
                    scores = scores.masked_fill(~ok[:, None, :], float("-inf"))
                out = scores.softmax(-1) @ v[:, :, i]  # [B, h, S, length, Ev]
            indices.append(i[ok])
            outputs.append(out[:, :, ok])
    every = torch.cat(indices)
    return torch.cat(outputs, dim=2)[:, :, torch.argsort(every)]


def scene_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    layout: Points,
    scale: float,
    rows: int = 512,
) -> torch.Tensor:
    """Attention under ``pattern.mask_rows`` on points, one scene and ``rows`` queries at
    a time (the keys of other scenes are never touched). Shapes as ``group_attention``."""
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    heads = q.shape[1]
    for tokens in layout.scene_tokens():
        kt, vt = k[:, :, tokens], v[:, :, tokens]
        for queries in tokens.split(rows):
            mask = pattern.mask_rows(layout, queries.cpu(), heads)[..., tokens.cpu()]
            out[:, :, queries] = F.scaled_dot_product_attention(
                q[:, :, queries], kt, vt, attn_mask=mask.to(q.device), scale=scale
            )
    return out
