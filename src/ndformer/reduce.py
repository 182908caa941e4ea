"""Token reduction: ToMe's bipartite soft matching and EViT's inattentive-token fusion.

Reduced tokens no longer form a grid. Every reduction returns the new tokens, their
sizes (how many original tokens each one stands for) and a ``source`` map that
``unmerge`` uses to give every original token its current token's features back.

Shapes: tokens [B, N, C], sizes [B, N] (float), metric [B, N, C'], source [B, N0]
(for each of the N0 original tokens, the index of the token that now holds it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Reduced:
    """The result of one reduction step."""

    tokens: torch.Tensor  # [B, N - r, C]
    sizes: torch.Tensor  # [B, N - r]
    source: torch.Tensor  # [B, N0] -> index into the reduced tokens


def start_source(tokens: torch.Tensor) -> torch.Tensor:
    """The identity ``source`` map for unreduced tokens: [B, N]."""
    b, n = tokens.shape[:2]
    return torch.arange(n, device=tokens.device).expand(b, n)


def _pick(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` [B, k] of ``x`` [B, N] or [B, N, C]."""
    return x.gather(1, index if x.dim() == 2 else index[..., None].expand(-1, -1, x.shape[-1]))


def _weighted_into(
    base: torch.Tensor, base_sizes: torch.Tensor, index: torch.Tensor, extra, extra_sizes
):
    """Size-weighted means after adding ``extra`` tokens into ``base`` rows ``index``."""
    total = base * base_sizes[..., None]
    total = total.scatter_add(1, index[..., None].expand_as(extra), extra * extra_sizes[..., None])
    sizes = base_sizes.scatter_add(1, index, extra_sizes)
    return total / sizes[..., None], sizes


def tome_merge(
    tokens: torch.Tensor,
    sizes: torch.Tensor,
    source: torch.Tensor,
    r: int,
    metric: torch.Tensor | None = None,
) -> Reduced:
    """Merge ``r`` tokens by bipartite soft matching (ToMe).

    Tokens alternate into sets A (even positions) and B (odd). Each A token finds its
    most similar B token (cosine similarity of ``metric``, default the tokens); the
    ``r`` A tokens with the most similar partners are merged into them, as
    size-weighted means; sizes add up. The result is the kept A tokens (in their
    order) followed by the B tokens, so the size-weighted sum of all tokens is
    unchanged and exactly ``r`` tokens disappear.
    """
    b, n, _ = tokens.shape
    a_count = (n + 1) // 2
    if not 0 <= r <= min(a_count, n - a_count):
        raise ValueError(
            f"ToMe r={r} must be in [0, {min(a_count, n - a_count)}] for {n} tokens"
            f" (tokens {tuple(tokens.shape)})"
        )
    if r == 0:
        return Reduced(tokens, sizes, source)
    metric = tokens if metric is None else metric
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    ma, mb = metric[:, 0::2], metric[:, 1::2]
    best, partner = (ma @ mb.transpose(1, 2)).max(dim=-1)  # [B, |A|]
    order = torch.sort(best, dim=-1, descending=True, stable=True).indices
    merged, kept = order[:, :r], order[:, r:].sort(dim=-1).values
    xa, sa, xb, sb = tokens[:, 0::2], sizes[:, 0::2], tokens[:, 1::2], sizes[:, 1::2]

    into = partner.gather(1, merged)
    xb, sb = _weighted_into(xb, sb, into, _pick(xa, merged), _pick(sa, merged))
    out_tokens = torch.cat((_pick(xa, kept), xb), dim=1)
    out_sizes = torch.cat((_pick(sa, kept), sb), dim=1)
    # Where each current token goes: kept A -> its rank among the kept, merged A -> its
    # partner in B, B token j -> (number kept) + j.
    kept_count = a_count - r
    new_index = torch.empty(b, n, dtype=torch.long, device=tokens.device)
    a_new = torch.empty(b, a_count, dtype=torch.long, device=tokens.device)
    a_new.scatter_(1, kept, torch.arange(kept_count, device=tokens.device).expand(b, -1))
    a_new.scatter_(1, merged, kept_count + into)
    new_index[:, 0::2] = a_new
    new_index[:, 1::2] = kept_count + torch.arange(n - a_count, device=tokens.device)
    return Reduced(out_tokens, out_sizes, new_index.gather(1, source))


def evit_fuse(
    tokens: torch.Tensor,
    sizes: torch.Tensor,
    source: torch.Tensor,
    attention: torch.Tensor,
    keep: int,
) -> Reduced:
    """Keep the ``keep`` most attended tokens and fuse the rest into one (EViT).

    ``attention`` [B, N] is how much attention each token receives (e.g. the mean
    attention weight over heads and queries). The dropped tokens become one token,
    their size-weighted mean (so the size-weighted sum is conserved), appended after
    the kept tokens (kept in order).
    """
    b, n = tokens.shape[:2]
    if not 1 <= keep < n:
        raise ValueError(f"EViT keep={keep} must be in [1, {n - 1}] for {n} tokens")
    order = torch.sort(attention, dim=-1, descending=True, stable=True).indices
    kept, dropped = order[:, :keep].sort(dim=-1).values, order[:, keep:]

    ds = _pick(sizes, dropped)
    fused = (_pick(tokens, dropped) * ds[..., None]).sum(1, keepdim=True) / ds.sum(1)[:, None, None]
    out_tokens = torch.cat((_pick(tokens, kept), fused), dim=1)
    out_sizes = torch.cat((_pick(sizes, kept), ds.sum(1, keepdim=True)), dim=1)
    new_index = torch.full((b, n), keep, dtype=torch.long, device=tokens.device)
    new_index.scatter_(1, kept, torch.arange(keep, device=tokens.device).expand(b, -1))
    return Reduced(out_tokens, out_sizes, new_index.gather(1, source))


def unmerge(tokens: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Give every original token the features of the token that holds it:
    [B, N, C] + source [B, N0] -> [B, N0, C], in the original order."""
    return tokens.gather(1, source[..., None].expand(-1, -1, tokens.shape[-1]))
