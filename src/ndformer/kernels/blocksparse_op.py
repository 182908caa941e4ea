"""The block-sparse path as a PyTorch custom op, ``torch.ops.ndformer.block_sparse``, with
a fake (shape-only) implementation and an autograd formula calling its backward op.

The pattern reaches the op as its spec string (``repr`` of a pattern parses back to it)
with the grid shape, the tile and the head count, and the op builds (from the cache) the
plan it runs, so ``torch.compile`` sees one opaque node instead of tracing the plan
building (whose data-dependent sizes broke the graph) and ``torch.export`` keeps it.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..layout import Grid
from ..patterns import Pattern
from ..patterns import pattern as parse_pattern
from .blocksparse import block_sparse_backward, block_sparse_forward, block_sparse_plan
from .merge import lse_dtype


@functools.lru_cache(maxsize=256)
def _parsed(spec: str) -> Pattern:
    return parse_pattern(spec)


def _plan(q: Tensor, spec: str, shape: list[int], tile: list[int]):
    return block_sparse_plan(_parsed(spec), Grid(tuple(shape)), tuple(tile), q.shape[1], q.device)


@torch.library.custom_op("ndformer::block_sparse", mutates_args=())
def block_sparse_op(
    q: Tensor, k: Tensor, v: Tensor, spec: str, shape: list[int], tile: list[int], scale: float
) -> tuple[Tensor, Tensor]:
    """q, k [B, h, N, E], v [B, h, N, Ev] -> (out [B, h, N, Ev], lse [B, h, N])."""
    return block_sparse_forward(q, k, v, _plan(q, spec, shape, tile), scale)


@block_sparse_op.register_fake
def _(q, k, v, spec, shape, tile, scale):
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    return out, q.new_empty(q.shape[:3], dtype=lse_dtype(q.dtype))


@torch.library.custom_op("ndformer::block_sparse_backward", mutates_args=())
def block_sparse_backward_op(
    dout: Tensor, dlse: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    spec: str, shape: list[int], tile: list[int], scale: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(dq, dk, dv) of ``block_sparse`` for the gradients of its output and log-sum-exp."""
    plan = _plan(q, spec, shape, tile)
    return block_sparse_backward(dout, dlse, q, k, v, out, lse, plan, scale)


@block_sparse_backward_op.register_fake
def _(dout, dlse, q, k, v, out, lse, spec, shape, tile, scale):
    # contiguous, whatever the inputs' strides: what the real op returns
    return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))


def _setup(ctx, inputs, output) -> None:
    q, k, v, spec, shape, tile, scale = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.args = (spec, shape, tile, scale)


def _backward(ctx, dout: Tensor | None, dlse: Tensor | None):
    q, k, v, out, lse = ctx.saved_tensors
    dout = torch.zeros_like(out) if dout is None else dout
    dlse = torch.zeros_like(lse) if dlse is None else dlse
    dq, dk, dv = block_sparse_backward_op(dout.contiguous(), dlse.contiguous(), q, k, v, out,
                                          lse, *ctx.args)  # fmt: skip
    return dq, dk, dv, None, None, None, None


block_sparse_op.register_autograd(_backward, setup_context=_setup)


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: Pattern,
    layout: Grid,
    tile: tuple[int, ...],
    scale: float,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """q, k: [B, heads, N, E]; v: [B, heads, N, Ev] -> [B, heads, N, Ev] under ``pattern``
    on ``layout`` through the custom op (differentiable in q, k, v through the output and,
    if ``return_lse``, the log-sum-exp [B, heads, N] also returned); semantics as
    ``block_sparse_forward``."""
    out, lse = block_sparse_op(q, k, v, repr(pattern), list(layout.shape), list(tile),
                               float(scale))  # fmt: skip
    return (out, lse) if return_lse else out
