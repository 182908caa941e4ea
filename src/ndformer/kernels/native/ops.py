"""The native kernels as PyTorch custom ops: ``torch.ops.ndformer.native_attention`` (and
``native_groups`` for groups of points), each with a fake (shape-only) implementation
and an autograd formula that calls its backward op. Autograd, ``torch.compile`` (no
graph breaks: the ops are opaque nodes whose output shapes the fake functions state) and
``torch.export`` see them as ordinary operators.

A pattern reaches the op as plain integers (``encode_rules``) and the grid shape, so the
op rebuilds (from the cache) the plan it runs; groups of points reach it as their ids.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import calls
from .plans import NativePlan, decode_rules, native_plan, points_plan


def _plan(rules: list[int], shape: list[int], dtype: torch.dtype) -> NativePlan:
    plan = native_plan(decode_rules(list(rules)), tuple(shape), dtype)
    if isinstance(plan, str):  # attend checked this before calling
        raise ValueError(f"native attention {plan}")
    return plan


def _groups_plan(groups: Tensor, dtype: torch.dtype) -> NativePlan:
    plan = points_plan(groups, dtype)
    if isinstance(plan, str):
        raise ValueError(f"native group attention {plan}")
    return plan


def _contiguous(x: Tensor) -> Tensor:
    """An empty contiguous tensor like ``x``: the layout the kernels write, whatever the
    layout of their inputs (the fake functions must state exactly that)."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _outputs(q: Tensor, v: Tensor, want_lse: bool) -> tuple[Tensor, Tensor]:
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    return out, q.new_empty(q.shape[:3] if want_lse else (0,))


# -- separable patterns on grids --------------------------------------------------------
@torch.library.custom_op("ndformer::native_attention", mutates_args=(), device_types="cpu")
def native_attention_op(
    q: Tensor, k: Tensor, v: Tensor, rules: list[int], shape: list[int], scale: float,
    want_lse: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """q, k [B, h, N, E], v [B, h, N, Ev] -> (out [B, h, N, Ev], lse [B, h, N] or [0])."""
    out, lse = calls.forward(q, k, v, _plan(rules, shape, q.dtype), scale, want_lse)
    return out, lse if lse is not None else q.new_empty(0)


@native_attention_op.register_fake
def _(q, k, v, rules, shape, scale, want_lse):
    return _outputs(q, v, want_lse)


@torch.library.custom_op("ndformer::native_attention_backward", mutates_args=(), device_types="cpu")
def native_attention_backward_op(
    dout: Tensor, dlse: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    rules: list[int], shape: list[int], scale: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(dq, dk, dv) of ``native_attention`` for the gradients ``dout`` of its output and
    ``dlse`` of its log-sum-exp (``[0]``: none)."""
    return calls.backward(dout, q, k, v, out, lse, _plan(rules, shape, q.dtype), scale, dlse)


@native_attention_backward_op.register_fake
def _(dout, dlse, q, k, v, out, lse, rules, shape, scale):
    return _contiguous(q), _contiguous(k), _contiguous(v)


def _setup(ctx, inputs, output) -> None:
    q, k, v, rules, shape, scale, want_lse = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.rules, ctx.shape, ctx.scale, ctx.want_lse = rules, shape, scale, want_lse


def _lse_grad(dlse: Tensor | None, q: Tensor) -> Tensor:
    """The log-sum-exp's gradient as the backward ops take it: ``[0]`` when it has none."""
    return q.new_empty(0) if dlse is None or dlse.numel() == 0 else dlse


def _backward(ctx, dout: Tensor, dlse: Tensor | None):
    if not ctx.want_lse:
        raise RuntimeError("native_attention was called without want_lse: no backward")
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = native_attention_backward_op(dout, _lse_grad(dlse, q), q, k, v, out, lse,
                                              ctx.rules, ctx.shape, ctx.scale)  # fmt: skip
    return dq, dk, dv, None, None, None, None


native_attention_op.register_autograd(_backward, setup_context=_setup)


# -- groups of points --------------------------------------------------------------------
@torch.library.custom_op("ndformer::native_groups", mutates_args=(), device_types="cpu")
def native_groups_op(
    q: Tensor, k: Tensor, v: Tensor, groups: Tensor, scale: float, want_lse: bool
) -> tuple[Tensor, Tensor]:
    """Attention iff ``groups[i] == groups[j]`` (ids [N]); outputs as ``native_attention``."""
    out, lse = calls.forward(q, k, v, _groups_plan(groups, q.dtype), scale, want_lse)
    return out, lse if lse is not None else q.new_empty(0)


@native_groups_op.register_fake
def _(q, k, v, groups, scale, want_lse):
    return _outputs(q, v, want_lse)


@torch.library.custom_op("ndformer::native_groups_backward", mutates_args=(), device_types="cpu")
def native_groups_backward_op(
    dout: Tensor, dlse: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    groups: Tensor, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(dq, dk, dv) of ``native_groups``, gradients as ``native_attention_backward``."""
    return calls.backward(dout, q, k, v, out, lse, _groups_plan(groups, q.dtype), scale, dlse)


@native_groups_backward_op.register_fake
def _(dout, dlse, q, k, v, out, lse, groups, scale):
    return _contiguous(q), _contiguous(k), _contiguous(v)


def _setup_groups(ctx, inputs, output) -> None:
    q, k, v, groups, scale, want_lse = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, groups)
    ctx.scale, ctx.want_lse = scale, want_lse


def _backward_groups(ctx, dout: Tensor, dlse: Tensor | None):
    if not ctx.want_lse:
        raise RuntimeError("native_groups was called without want_lse: no backward")
    q, k, v, out, lse, groups = ctx.saved_tensors
    dq, dk, dv = native_groups_backward_op(dout, _lse_grad(dlse, q), q, k, v, out, lse, groups,
                                           ctx.scale)  # fmt: skip
    return dq, dk, dv, None, None, None


native_groups_op.register_autograd(_backward_groups, setup_context=_setup_groups)
