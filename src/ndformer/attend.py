"""``attend``: attention under a pattern, dispatched to the fastest exact backend."""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch

from . import backends, choice
from ._checks import check_per_axis, needs_grad, per_axis
from ._compile import assume_constant_result, eager_under_compile
from .backends import Call
from .kernels.merge import masked_attention_lse, merge_attentions
from .layout import FixedPoints, Grid, Points, as_layout
from .patterns import HeadSplit, Pattern
from .patterns import pattern as parse_pattern

BackendName = Literal[
    "auto",
    "keyset",
    "sdpa",
    "native",
    "groups",
    "scenes",
    "tiled",
    "natten",
    "flex",
    "blocksparse",
    "reference",
]
#: Every name ``attend(backend=...)`` takes: ``"auto"`` and the backends of ``backends.py``.
BACKENDS: tuple[str, ...] = backends.NAMES

#: Default number of query tokens in one N-D tile (about 64**(1/ndim) per axis):
#: 8x8 in 2-D, 4x4x4 in 3-D. Chosen from timings of tile sizes 2..16 (neighborhood(7)
#: on 64x64, neighborhood(5) on 32^3) on a 2-core x86 CPU; ``ndformer bench`` shows the result.
TILE_TOKENS = 64


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Grid) -> None:
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, heads, N, head_dim]; got {shapes}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"q, k and v must have the same batch size; got {shapes}")
    if k.shape[1] != v.shape[1] or k.shape[1] < 1 or q.shape[1] % k.shape[1]:
        raise ValueError(
            f"k and v must have the same number of heads, q's or a divisor of it (grouped-query"
            f" attention); got {shapes}"
        )
    n = layout.num_tokens
    if not (q.shape[2] == k.shape[2] == v.shape[2] == n):
        raise ValueError(
            f"q, k and v must have N = {n} tokens (the layout {layout.shape} flattened);"
            f" got {shapes}"
        )
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must have the same head_dim; got {shapes}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must have one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.is_floating_point():
        raise ValueError(f"q, k and v must be floating point; got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"q, k and v must be on one device; got {q.device}, {k.device}, {v.device}"
        )


def expand_kv(k: torch.Tensor, v: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention's key/value heads for ``heads`` query heads: k, v [B, kv_heads,
    N, E] -> [B, heads, N, E], key/value head ``h // (heads // kv_heads)`` for query head h
    (unchanged when ``kv_heads == heads``)."""
    if k.shape[1] == heads:
        return k, v
    group = heads // k.shape[1]
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


def _tile(tile: int | tuple[int, ...] | None, layout: Grid) -> tuple[int, ...]:
    """Query tile length per axis: the given sizes, else about TILE_TOKENS tokens in all."""
    if tile is None:
        tile = max(1, round(TILE_TOKENS ** (1 / layout.ndim)))
    tile = per_axis("tile", check_per_axis("tile", tile, minimum=1), layout.ndim)
    return tuple(min(t, n) for t, n in zip(tile, layout.shape, strict=True))


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | str,
    layout: Grid | Points | tuple[int, ...],
    *,
    scale: float | None = None,
    backend: BackendName = "auto",
    tile: int | tuple[int, ...] | None = None,
    return_lse: bool = False,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of q over k, v restricted to the pairs ``pattern`` allows on ``layout``.

    Args:
        q: [B, heads, N, head_dim]; k: [B, kv_heads, N, head_dim]; v: [B, kv_heads, N,
            head_dim_v], tokens in the layout's order (row-major over the grid).
            ``kv_heads`` is ``heads`` or a divisor of it (grouped-query attention: query
            head h attends with key/value head ``h // (heads // kv_heads)``, as
            ``F.scaled_dot_product_attention(..., enable_gqa=True)``).
        pattern: a ``Pattern`` or a spec string (``"neighborhood(7)"``).
        layout: a ``Grid`` (or its shape) or sparse ``Points`` with ``num_tokens == N``;
            on points, attention never crosses scenes.
        scale: logit scale, default ``1 / sqrt(head_dim)``.
        backend: ``"auto"`` takes, per call, the first backend of
            ``choice.AUTO_ORDER`` for the inputs' device that supports the call; a
            backend name (``"native"``, ``"tiled"``, ``"blocksparse"``, ``"flex"``,
            ``"reference"``, ...; see ``backends.BACKENDS``) runs that one or raises a
            ``ValueError`` with the reason it cannot.
        tile: query tile size per axis (int or tuple) for the tiled and block-sparse
            paths; a tuning knob that never changes the result.
        return_lse: also return the log-sum-exp of every query's allowed scores,
            ``lse[b, h, i] = log sum_j exp(scale * q_i . k_j)`` [B, heads, N] (float32 for
            half inputs), differentiable; ``merge_attentions`` combines such pairs.
        extra_k, extra_v: [B, kv_heads, T, head_dim] and [B, kv_heads, T, head_dim_v]:
            T extra tokens (CLS, registers, a global summary) that every query also sees,
            in the same softmax as the pattern's keys (NATTEN's additional keys).

    Returns [B, heads, N, head_dim_v], equal to
    ``F.scaled_dot_product_attention(q, k, v, attn_mask=pattern.mask(layout, heads))``
    (for patterns over new keys: to ``pattern.reference``); with extra tokens, to SDPA
    over the tokens followed by the extra ones under the mask ``[pattern.mask | True]``;
    with ``return_lse``, ``(out, lse)``.
    """
    layout = as_layout(layout)
    pattern = parse_pattern(pattern)
    _check_inputs(q, k, v, layout)
    extra = _check_extra(q, k, v, extra_k, extra_v)
    k, v = expand_kv(k, v, q.shape[1])
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if not isinstance(layout, FixedPoints):  # checked when its group ids were made
        pattern.check(layout)
    tiles = _tile(tile, layout) if isinstance(layout, Grid) else ()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    grad = needs_grad(q, k, v)
    lse = bool(return_lse) or extra is not None
    call = Call(pattern, layout, q.device, q.dtype, q.shape[1], q.shape[-1], grad, lse)
    # on FixedPoints the data-dependent parts were done before: traceable like a grid
    run = _dispatch if isinstance(layout, (Grid, FixedPoints)) else _dispatch_points
    result = run(q, k, v, call, scale, tiles, backend)
    if extra is not None:  # the extra tokens: one dense [N, T] block, merged exactly
        both = masked_attention_lse(q, *expand_kv(*extra, q.shape[1]), scale)
        result = merge_attentions(*result, *both)
    return result if return_lse or extra is None else result[0]


def _check_extra(q, k, v, extra_k, extra_v) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The extra tokens (None if there are none), checked against q, k, v."""
    if extra_k is None and extra_v is None:
        return None
    if extra_k is None or extra_v is None:
        raise ValueError("extra_k and extra_v come together; got only "
                         + ("extra_k" if extra_v is None else "extra_v"))  # fmt: skip
    shapes = (f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, extra_k"
              f" {tuple(extra_k.shape)}, extra_v {tuple(extra_v.shape)}")  # fmt: skip
    if extra_k.dim() != 4 or extra_v.dim() != 4:
        raise ValueError(f"extra_k and extra_v must be 4-D [B, kv_heads, T, head_dim]; {shapes}")
    want_k = (k.shape[0], k.shape[1], extra_k.shape[2], k.shape[3])
    want_v = (v.shape[0], v.shape[1], extra_k.shape[2], v.shape[3])
    if tuple(extra_k.shape) != want_k or tuple(extra_v.shape) != want_v or not want_k[2]:
        raise ValueError(
            "extra_k and extra_v must be [B, kv_heads, T, head_dim] like k and v with the same"
            f" T >= 1 extra tokens; {shapes}"
        )
    if extra_k.dtype != q.dtype or extra_v.dtype != q.dtype or extra_k.device != q.device:
        raise ValueError(
            f"extra_k and extra_v must have q's dtype {q.dtype} and device {q.device}; got"
            f" {extra_k.dtype} on {extra_k.device}, {extra_v.dtype} on {extra_v.device}"
        )
    return extra_k, extra_v


@functools.lru_cache(maxsize=256)
def _grid_verdict(key: tuple, backend: str) -> str | None:
    """``choice.choose`` (auto: the chosen backend's name) or ``supports`` (a named
    backend: None or its reason) for a call on a grid described by plain values, cached:
    see ``_verdict``."""
    spec, shape, device, dtype, heads, head_dim, grad, lse, _ = key
    call = Call(parse_pattern(spec), Grid(shape), torch.device(device), dtype, heads,
                head_dim, grad, lse)  # fmt: skip
    if backend == "auto":
        return choice.choose(call).name
    return backends.BACKENDS[backend].verdict(call)


@assume_constant_result
def _constant_verdict(key: tuple, backend: str) -> str | None:
    """torch.compile calls this at trace time and keeps its result as a constant: the
    choice (and the plans it builds) stay out of the graph, so a compiled model has no
    graph break. The cached verdicts are also keyed by the backends' state (the native
    library as loaded)."""
    return _grid_verdict((*key, id(choice.state())), backend)


def _verdict(call: Call, backend: str) -> str | None:
    """The backend ``auto`` chooses (backend ``"auto"``), or whether a named backend runs
    ``call`` (None or its reason)."""
    if isinstance(call.layout, Grid):
        key = (repr(call.pattern), call.layout.shape, str(call.device), call.dtype, call.heads,
               call.head_dim, call.needs_grad, call.lse)  # fmt: skip
        return _constant_verdict(key, backend)
    if backend == "auto":
        return choice.choose(call).name
    return backends.BACKENDS[backend].verdict(call)


def _dispatch(q, k, v, call: Call, scale: float, tiles: tuple, backend: str) -> torch.Tensor:
    pattern = call.pattern
    if backend != "auto":
        chosen = backends.BACKENDS[backend]
        reason = _verdict(call, backend)
        if reason is None:
            return chosen.run(q, k, v, call, scale, tiles)
        if not isinstance(pattern, HeadSplit):
            raise ValueError(f"backend={backend!r} {reason}")
    elif not isinstance(pattern, HeadSplit):
        return backends.BACKENDS[_verdict(call, "auto")].run(q, k, v, call, scale, tiles)
    outputs = []  # a HeadSplit: every head group through its own pattern's backend
    for part, (start, stop) in zip(pattern.patterns, pattern.head_groups(q.shape[1]), strict=True):
        if stop > start:
            heads = slice(start, stop)
            group = call.with_pattern(part, stop - start)
            parts = (q[:, heads], k[:, heads], v[:, heads])
            outputs.append(_dispatch(*parts, group, scale, tiles, backend))
    if call.lse:  # (out, lse) per head group
        return tuple(torch.cat(parts, dim=1) for parts in zip(*outputs, strict=True))
    return torch.cat(outputs, dim=1)


#: On sparse points the choice and the plans are data-dependent (serialization, groups):
#: under torch.compile they run eagerly between graphs.
_dispatch_points = eager_under_compile(_dispatch)
