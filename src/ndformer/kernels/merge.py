"""Attention as (output, log-sum-exp) pairs: the dense form with its log-sum-exp, and the
exact merge of attention over two disjoint key sets into attention over their union."""

from __future__ import annotations

import torch


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every backend returns the log-sum-exp in: float32 for half inputs, else
    the inputs' own."""
    return torch.promote_types(dtype, torch.float32)


def masked_attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention and its log-sum-exp, written out (N x M scores).

    q [B, h, N, E], k [B, h, M, E], v [B, h, M, Ev], mask broadcastable to [B, h, N, M]
    (True: allowed) -> out [B, h, N, Ev] and lse [B, h, N] = log sum_j exp(scale q_i . k_j)
    over the allowed keys j. A query without keys gets out 0 and lse -inf (with finite
    gradients), where SDPA would give NaN.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).to(lse_dtype(q.dtype)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)
    lse = torch.logsumexp(scores.masked_fill(empty, 0.0), dim=-1, keepdim=True)
    lse = lse.masked_fill(empty, float("-inf"))
    probs = torch.exp(scores - lse.masked_fill(empty, 0.0))
    return torch.matmul(probs.to(v.dtype), v), lse.squeeze(-1)


def merge_attentions(
    out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over two disjoint key sets merged into attention over their union, exactly.

    ``out1`` [..., N, Ev] with ``lse1`` [..., N] is softmax attention over key set A (as
    ``attend(..., return_lse=True)`` returns it), ``out2``/``lse2`` over key set B. Returns
    (out, lse) of attention over A and B in one softmax: lse = log(e^lse1 + e^lse2) and
    out = (e^lse1 out1 + e^lse2 out2) / e^lse. An empty set (lse -inf) contributes nothing;
    if both are empty, out is 0 and lse -inf. Differentiable in all four inputs.
    """
    if out1.shape != out2.shape or lse1.shape != lse2.shape or out1.shape[:-1] != lse1.shape:
        raise ValueError(
            "merge_attentions needs out1, out2 of one shape [..., N, Ev] and lse1, lse2 of"
            f" shape [..., N]; got out1 {tuple(out1.shape)}, lse1 {tuple(lse1.shape)}, out2"
            f" {tuple(out2.shape)}, lse2 {tuple(lse2.shape)}"
        )
    # any reference point gives the same result: the larger lse (detached) keeps exp <= 1
    top = torch.maximum(lse1, lse2).detach()
    top = torch.where(torch.isneginf(top), 0.0, top)
    w1, w2 = torch.exp(lse1 - top), torch.exp(lse2 - top)
    total = w1 + w2
    empty = total == 0
    total = torch.where(empty, 1.0, total)
    lse = torch.where(empty, float("-inf"), top + torch.log(total))
    out = out1 * (w1 / total).unsqueeze(-1).to(out1.dtype)
    return out + out2 * (w2 / total).unsqueeze(-1).to(out2.dtype), lse
