"""The reference: dense masked SDPA. Defines what every fast path must compute."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._compile import assume_constant_result
from ..layout import FixedPoints, Grid
from ..patterns import Pattern
from ..patterns import pattern as parse_pattern
from .merge import masked_attention_lse


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    layout: Grid,
    scale: float | None = None,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` under ``pattern.mask``; builds the N x N mask.

    q, k: [B, heads, N, E]; v: [B, heads, N, Ev]; returns [B, heads, N, Ev].
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(pattern, layout, q), scale=scale)


def reference_attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    layout: Grid,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference with the log-sum-exp of every query's allowed scores: (out
    [B, heads, N, Ev], lse [B, heads, N]) from the scores written out under ``pattern.mask``."""
    return masked_attention_lse(q, k, v, scale, _mask(pattern, layout, q))


def _mask(pattern: Pattern, layout, q: torch.Tensor) -> torch.Tensor:
    if isinstance(layout, Grid):  # traced (torch.compile / export): a constant of the graph
        return _grid_mask(repr(pattern), layout.shape, q.shape[1], str(q.device))
    if isinstance(layout, FixedPoints):  # a partition given as ids: the same mask, traceable
        ids = layout.group_ids_of(pattern).to(q.device)
        return (ids[:, None] == ids[None, :])[None]
    return pattern.mask(layout, heads=q.shape[1]).to(q.device)


@assume_constant_result
def _grid_mask(spec: str, shape: tuple[int, ...], heads: int, device: str) -> torch.Tensor:
    """``pattern.mask`` of a grid from plain values, so that dynamo calls it at trace time
    (mask building reads /proc for its memory check, which dynamo cannot trace)."""
    return parse_pattern(spec).mask(Grid(shape), heads=heads).to(device)
