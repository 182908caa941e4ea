"""Fast paths of the key-set patterns (``Pooled``, ``Summary``, ``Routing``, ``Linear``).

Each function equals its pattern's dense ``reference`` (tests hold them equal in values
and gradients) without N x N memory. They reuse ``patchify`` for N-D windows and block
means, so they are written once for every ndim.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .._checks import per_axis
from ..layout import Grid, Points
from ..patterns import KeySetPattern, Linear, Pooled, Routing, Summary
from ..patterns.keysets import FEATURES
from ..tokens import patchify, unpatchify

#: Bytes of q (or k, v) per chunk of the linear path: well inside a core's L2 cache.
LINEAR_CHUNK_BYTES = 1 << 19


def _windows(x: torch.Tensor, layout: Grid, sizes: tuple[int, ...]) -> torch.Tensor:
    """[B, h, N, E] -> [B, h, windows, tokens per window, E] (zero-padded border windows)."""
    b, h, _, e = x.shape
    patches = patchify(x.reshape(b * h, *layout.shape, e).movedim(-1, 1), sizes)
    return patches.reshape(b, h, -1, e, math.prod(sizes)).transpose(-1, -2)


def _real_slots(layout: Grid, sizes: tuple[int, ...], device) -> torch.Tensor:
    """Bool [windows, tokens per window]: False for the padding of border windows."""
    ones = torch.ones(1, 1, layout.num_tokens, 1, device=device)
    return _windows(ones, layout, sizes)[0, 0, :, :, 0] > 0


def _unwindow(x: torch.Tensor, layout: Grid, sizes: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``_windows`` (padding cropped): -> [B, h, N, E]."""
    b, h, _, _, e = x.shape
    grid = [-(-n // s) for n, s in zip(layout.shape, sizes, strict=True)]
    tokens = x.transpose(-1, -2).reshape(b * h, *grid, e * math.prod(sizes))
    return unpatchify(tokens, sizes, layout.shape).movedim(1, -1).reshape(b, h, -1, e)


def pooled_attention(pattern: Pooled, q, k, v, layout: Grid | Points, scale: float):
    """``softmax(q . pool(K)^T * scale) . pool(V)`` with O(N) block means; on points, each
    scene's queries over that scene's occupied blocks."""
    if isinstance(layout, Points):
        return _pooled_points(pattern, q, k, v, layout, scale)
    return F.scaled_dot_product_attention(
        q, pattern.pool(k, layout), pattern.pool(v, layout), scale=scale
    )


def _pooled_points(pattern: Pooled, q, k, v, layout: Points, scale: float) -> torch.Tensor:
    of_token, scene = (t.to(q.device) for t in pattern.point_blocks(layout))
    count = torch.bincount(of_token).to(q.dtype)[:, None]

    def pool(x: torch.Tensor) -> torch.Tensor:  # segment means, O(N) memory
        sums = x.new_zeros(*x.shape[:2], len(count), x.shape[-1]).index_add(2, of_token, x)
        return sums / count

    kp, vp = pool(k), pool(v)
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    for tokens in layout.scene_tokens():
        tokens = tokens.to(q.device)
        blocks = (scene == layout.batch[tokens[0]]).nonzero().squeeze(1)
        out[:, :, tokens] = F.scaled_dot_product_attention(
            q[:, :, tokens], kp[:, :, blocks], vp[:, :, blocks], scale=scale
        )
    return out


def summary_attention(pattern: Summary, q, k, v, layout: Grid, scale: float) -> torch.Tensor:
    """Each window's queries over [its keys; every block's pooled key], batched over windows."""
    sizes = per_axis("Summary window", pattern.window, layout.ndim)
    sizes = tuple(min(s, n) for s, n in zip(sizes, layout.shape, strict=True))
    pooled = Pooled(pattern.block)
    kp, vp = pooled.pool(k, layout), pooled.pool(v, layout)  # [B, h, M, E]
    qw, kw, vw = (_windows(x, layout, sizes) for x in (q, k, v))
    count = qw.shape[2]
    keys = torch.cat((kw, kp.unsqueeze(2).expand(-1, -1, count, -1, -1)), dim=-2)
    values = torch.cat((vw, vp.unsqueeze(2).expand(-1, -1, count, -1, -1)), dim=-2)
    real = _real_slots(layout, sizes, q.device)
    allowed = torch.cat((real, real.new_ones(count, kp.shape[-2])), dim=-1)
    out = F.scaled_dot_product_attention(
        qw, keys, values, attn_mask=allowed[:, None, :], scale=scale
    )
    return _unwindow(out, layout, sizes)


def routing_attention(pattern: Routing, q, k, v, layout: Grid, scale: float) -> torch.Tensor:
    """Each region's queries over the tokens of its routed regions, gathered per region."""
    sizes = pattern.region_sizes(layout)
    chosen = pattern.select(q, k, layout)
    qw, kw, vw = (_windows(x, layout, sizes) for x in (q, k, v))  # [B, h, R, T, E]
    count, tokens = kw.shape[2:4]

    def gather(x: torch.Tensor) -> torch.Tensor:  # -> [B, h, R, topk * T, E]
        flat = chosen.flatten(2)[..., None, None].expand(-1, -1, -1, tokens, x.shape[-1])
        picked = x.gather(2, flat)  # [B, h, R * topk, T, E]; backward scatters into x
        return picked.unflatten(2, (count, pattern.topk)).flatten(3, 4)

    real = _real_slots(layout, sizes, q.device)  # [R, T]
    allowed = real[chosen].flatten(-2)  # [B, h, R, topk * T]
    out = F.scaled_dot_product_attention(
        qw, gather(kw), gather(vw), attn_mask=allowed[..., None, :], scale=scale
    )
    return _unwindow(out, layout, sizes)


def linear_attention(pattern: Linear, q, k, v, layout: Grid, scale: float) -> torch.Tensor:
    """Two passes over token chunks of about ``LINEAR_CHUNK_BYTES`` per tensor, so that the
    features phi(k), phi(q) are used while still in cache: the time per token then stays
    flat as N grows past the cache, instead of stepping up."""
    phi = FEATURES[pattern.feature]
    b, h, n, e = q.shape
    step = max(1, LINEAR_CHUNK_BYTES // (b * h * max(e, v.shape[-1]) * q.element_size()))
    ones = v.new_ones(b, h, min(step, n), 1)
    # [phi(K)^T V | phi(K)^T 1]: the context and the key sum in one matmul.
    context = sum(
        phi(k[:, :, lo : lo + step]).transpose(-1, -2)
        @ torch.cat((v[:, :, lo : lo + step], ones[:, :, : min(step, n - lo)]), dim=-1)
        for lo in range(0, n, step)
    )  # [B, h, E, Ev + 1]
    outputs = []
    for lo in range(0, n, step):
        both = phi(q[:, :, lo : lo + step]) @ context  # [B, h, chunk, Ev + 1]
        outputs.append(both[..., :-1] / both[..., -1:].clamp_min(pattern.eps))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)


FastPath = Callable[..., torch.Tensor]

#: The fast path of every key-set pattern type.
FAST_PATHS: dict[type, FastPath] = {
    Pooled: pooled_attention,
    Summary: summary_attention,
    Routing: routing_attention,
    Linear: linear_attention,
}


def keyset_attention(
    pattern: KeySetPattern, q, k, v, layout: Grid | Points, scale: float
) -> torch.Tensor:
    """q, k [B, h, N, E], v [B, h, N, Ev] -> [B, h, N, Ev]: ``pattern``'s fast path, equal
    to ``pattern.reference``."""
    for kind, fast in FAST_PATHS.items():
        if isinstance(pattern, kind):
            return fast(pattern, q, k, v, layout, scale)
    raise ValueError(f"no fast path for {pattern!r}; use backend='reference'")
