"""Calling the compiled kernels: tensors and plans into the typed argument structs."""

from __future__ import annotations

import threading

import numpy as np
import torch

from .abi import NdfCall, NdfLanes, NdfShared, NdfStack
from .build import library
from .plans import NativePlan

DTYPES = {torch.float32: "f32", torch.float64: "f64"}


def _ptr(x: torch.Tensor | np.ndarray | None) -> int | None:
    if x is None:
        return None
    return x.data_ptr() if isinstance(x, torch.Tensor) else x.ctypes.data


def _call(q, k, v, scale: float, **tensors) -> NdfCall:
    rows, n, e = q.shape
    call = NdfCall(rows=rows, n=n, e=e, ev=v.shape[-1], scale=scale,
                   threads=torch.get_num_threads())  # fmt: skip
    for name, x in (("q", q), ("k", k), ("v", v), *tensors.items()):
        setattr(call, name, _ptr(x))
    return call


def _shared(plan) -> NdfShared:
    p = plan.shared
    return NdfShared(tokens=_ptr(p.tokens), keys=_ptr(p.keys), counts=_ptr(p.counts),
                     first=_ptr(p.first), tiles=p.tiles, slots=p.slots,
                     groups=p.groups)  # fmt: skip


def _lanes(plan: NativePlan, n: int) -> tuple[NdfLanes, NdfStack, np.ndarray]:
    """The lane and stacked plans as structs (and the chunk table they point to, which
    must outlive the call)."""
    lanes, stack = plan.lanes, plan.stack
    rest, chunks = stack.rest, stack.chunks
    if len(rest) and len(chunks):  # the lane kernel's tiles need the whole row transposed
        chunks = _whole_row(stack.groups, n)
    lp = NdfLanes(tokens=_ptr(lanes.tokens), kind=_ptr(lanes.kind), base=_ptr(lanes.base),
                  offsets=_ptr(lanes.offsets), start=_ptr(lanes.start), list=_ptr(rest),
                  tiles=lanes.tiles, slots=lanes.slots, count=len(rest))  # fmt: skip
    sp = NdfStack(
        tok0=_ptr(stack.tok0), lanes=_ptr(stack.lanes), sig=_ptr(stack.sig),
        perm=_ptr(stack.perm), idx=_ptr(stack.idx), fold=_ptr(stack.fold),
        shift=_ptr(stack.shift), first=_ptr(stack.first), blocks=_ptr(stack.blocks),
        column=_ptr(stack.column), chunks=_ptr(chunks), groups=stack.groups,
        nchunks=len(chunks),
    )  # fmt: skip
    return lp, sp, chunks


_whole = {}


def _whole_row(groups: int, n: int) -> np.ndarray:
    key = (groups, n)
    if key not in _whole:
        _whole[key] = np.array([[0, groups, 0, n]], np.int64)
    return _whole[key]


_workspaces = threading.local()


def _workspace(nbytes: int) -> torch.Tensor:
    """Scratch of at least ``nbytes``, reused by the calling thread while it is big enough
    (fresh pages for every call cost about as much as the transposes)."""
    held = getattr(_workspaces, "tensor", None)
    if held is None or held.numel() < nbytes or held.numel() > 4 * nbytes + (1 << 22):
        _workspaces.tensor = held = torch.empty(nbytes, dtype=torch.uint8)
    return held


def _run_lanes(name: str, call: NdfCall, plan: NativePlan, dtype: torch.dtype) -> None:
    lib, suffix = library().lib, DTYPES[dtype]
    lp, sp, _chunks = _lanes(plan, call.n)
    backward = name == "backward"
    needed = getattr(lib, f"ndf_lanes_work_{suffix}")(call, lp, sp, int(backward))
    work = _workspace(needed)
    call.work, call.work_bytes = work.data_ptr(), work.numel()
    status = getattr(lib, f"ndf_lanes_{name}_{suffix}")(call, lp, sp)
    if status != 0:  # pragma: no cover - the workspace is sized by the library itself
        raise RuntimeError(f"native lane kernel {name} refused its workspace (status {status})")


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: NativePlan, scale: float, lse: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q, k [B, heads, N, E], v [B, heads, N, Ev] (CPU, float32/float64) -> out
    [B, heads, N, Ev] and, if ``lse``, the log-sum-exp of every query [B, heads, N]."""
    batch, heads, n, _ = q.shape
    rows = batch * heads
    q3, k3, v3 = (x.reshape(rows, n, x.shape[-1]).contiguous() for x in (q, k, v))
    out = q.new_empty(batch, heads, n, v.shape[-1])
    saved = q.new_empty(batch, heads, n) if lse else None
    call = _call(q3, k3, v3, scale, out=out, lse=saved)
    if plan.shared is not None:
        getattr(library().lib, f"ndf_shared_forward_{DTYPES[q.dtype]}")(call, _shared(plan))
    else:
        _run_lanes("forward", call, plan, q.dtype)
    return out, saved


def backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    plan: NativePlan,
    scale: float,
    dlse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk [B, heads, N, E], dv [B, heads, N, Ev] of ``forward``'s output for the output
    gradient ``dout`` (and ``dlse`` [B, heads, N] of the log-sum-exp, if given and not
    empty), from the saved log-sum-exp (scores recomputed, FlashAttention-2 style; no
    N x N memory).

    With P = softmax(S), dS = P * (dP - delta) where delta = rowsum(dout * out); the
    log-sum-exp adds dlse * P to dS (d lse / dS = P), so it enters as delta - dlse."""
    batch, heads, n, e = q.shape
    rows = batch * heads
    q3, k3, v3 = (x.reshape(rows, n, x.shape[-1]).contiguous() for x in (q, k, v))
    dout = dout.reshape(rows, n, v.shape[-1]).contiguous()
    delta = (dout * out.reshape(rows, n, -1)).sum(-1)
    if dlse is not None and dlse.numel():
        delta = delta - dlse.reshape(rows, n)
    delta = delta.contiguous()
    lse = lse.reshape(rows, n).contiguous()
    dq, dk = q.new_empty(batch, heads, n, e), k.new_empty(batch, heads, n, e)
    dv = v.new_empty(batch, heads, n, v.shape[-1])
    call = _call(q3, k3, v3, scale, dout=dout, lse=lse, delta=delta, dq=dq, dk=dk, dv=dv)
    if plan.shared is not None:
        getattr(library().lib, f"ndf_shared_backward_{DTYPES[q.dtype]}")(call, _shared(plan))
    else:
        _run_lanes("backward", call, plan, q.dtype)
    return dq, dk, dv
