"""The reference: dense masked SDPA. Defines what every fast path must compute."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import Grid
from ..patterns import Pattern
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
    mask = pattern.mask(layout, heads=q.shape[1]).to(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


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
    mask = pattern.mask(layout, heads=q.shape[1]).to(q.device)
    return masked_attention_lse(q, k, v, scale, mask)
