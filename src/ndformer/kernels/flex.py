"""FlexAttention backend: any mask pattern on a grid as a compiled block-sparse kernel.

PyTorch's FlexAttention takes the mask as a function ``mask_mod(b, h, q_idx, kv_idx)``
plus a ``BlockMask`` saying which (query block, key block) pairs hold any allowed pair.
Here the function is built from the pattern's own per-axis rules (a separable pattern
allows a pair iff every axis' small [L, L] relation table does), combined with & / |
for intersections and unions and selected by head for ``HeadSplit``; the block mask
is computed from the same function one query block at a time (O(N^2) work once per
(pattern, shape, heads), O(block * N) memory) and cached with the compiled kernel.

FlexAttention is fast on CUDA; on CPU it runs inference only (it has no CPU backward)
and needs a C++ compiler for ``torch.compile``. ``attend`` never depends on it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .._cache import plan_cache
from .._checks import needs_grad
from .._index import row_major_strides
from ..layout import Grid
from ..patterns import HeadSplit, Pattern, Separable
from ..patterns.axis import relation
from ..patterns.compose import Intersection, Union

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: FlexAttention's sparse block size (tokens per query / key block, row-major order).
BLOCK = 128


def flex_available() -> bool:
    """Whether this torch has FlexAttention."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _takes(pattern: Pattern) -> bool:
    if isinstance(pattern, Separable):
        return True
    if isinstance(pattern, Union | Intersection):
        return all(_takes(p) for p in pattern.parts)
    return isinstance(pattern, HeadSplit) and all(_takes(p) for p in pattern.patterns)


def flex_unavailable(
    pattern: Pattern, device: torch.device, dtype: torch.dtype, needs_grad: bool
) -> str | None:
    """None if FlexAttention can run ``pattern`` here, else the reason."""
    if not flex_available():
        return f"needs FlexAttention, which this torch ({torch.__version__}) lacks"
    if not _takes(pattern):
        return (
            "takes separable mask patterns (windows, neighborhoods, stripes, causal), their"
            f" unions / intersections and head splits; {pattern!r} is not one"
        )
    if device.type == "cpu" and needs_grad:
        return (
            "runs inference only on CPU (FlexAttention has no CPU backward); use"
            " backend='auto' to train, or call under torch.no_grad()"
        )
    if device.type == "cpu" and dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"on CPU takes float32, bfloat16 or float16 inputs; got {dtype}"
    return None


def mask_mod(pattern: Pattern, grid: Grid, heads: int, device: torch.device) -> MaskMod:
    """``f(b, h, q_idx, kv_idx) -> bool``, True iff ``pattern`` lets query q_idx attend key
    kv_idx on ``grid`` (tokens row-major); broadcasts over tensor arguments like
    ``pattern.mask(grid, heads)[h, q_idx, kv_idx]``."""
    if isinstance(pattern, Separable):
        rules = pattern.axis_rules(grid)
        tables = [relation(r, n).to(device) for r, n in zip(rules, grid.shape, strict=True)]
        strides = row_major_strides(grid.shape)

        def separable(b, h, q_idx, kv_idx):
            allowed = None
            for table, stride, n in zip(tables, strides, grid.shape, strict=True):
                step = table[(q_idx // stride) % n, (kv_idx // stride) % n]
                allowed = step if allowed is None else allowed & step
            return allowed

        return separable
    if isinstance(pattern, Union | Intersection):
        parts = [mask_mod(p, grid, heads, device) for p in pattern.parts]
        combine = pattern.combine

        def combination(b, h, q_idx, kv_idx):
            return functools.reduce(combine, (f(b, h, q_idx, kv_idx) for f in parts))

        return combination
    if isinstance(pattern, HeadSplit) and pattern.is_mask:
        groups = [
            (start, mask_mod(p, grid, stop - start, device))
            for p, (start, stop) in zip(pattern.patterns, pattern.head_groups(heads), strict=True)
            if stop > start
        ]

        def by_head(b, h, q_idx, kv_idx):
            allowed = groups[0][1](b, h, q_idx, kv_idx)
            for start, f in groups[1:]:
                allowed = torch.where(h >= start, f(b, h - start, q_idx, kv_idx), allowed)
            return allowed

        return by_head
    raise ValueError(
        f"backend='flex' takes separable mask patterns (windows, neighborhoods, stripes,"
        f" causal), their unions / intersections and head splits; {pattern!r} is not one"
    )


def block_flags(
    fn: MaskMod, num_tokens: int, heads: int, device: torch.device, block: int = BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) bool [heads, blocks, blocks] for ``block``-token row-major blocks:
    full = every pair of a complete block allowed, partial = some but not all (or an
    incomplete border block with any). Evaluated one query block at a time."""
    blocks = -(-num_tokens // block)
    kv = torch.arange(blocks * block, device=device)
    real_kv = (kv < num_tokens).view(blocks, block)
    complete_kv = real_kv.all(-1)
    partial = torch.zeros(heads, blocks, blocks, dtype=torch.bool, device=device)
    full = torch.zeros_like(partial)
    zero = torch.zeros((), dtype=torch.long, device=device)
    for head in range(heads):
        h = torch.full((), head, dtype=torch.long, device=device)
        for qb in range(blocks):
            q = torch.arange(qb * block, min((qb + 1) * block, num_tokens), device=device)
            allowed = fn(zero, h, q[:, None], kv[None, :].clamp_max(num_tokens - 1))
            allowed = allowed.view(len(q), blocks, block) & real_kv
            every = allowed.all(dim=2).all(dim=0) & complete_kv & (len(q) == block)
            full[head, qb] = every
            partial[head, qb] = allowed.any(dim=2).any(dim=0) & ~every
    return partial, full


def block_mask(fn: MaskMod, num_tokens: int, heads: int, device: torch.device):
    """FlexAttention ``BlockMask`` of ``fn`` over [heads, N, N]: partially allowed blocks
    evaluate ``fn``, fully allowed ones skip it, the rest are never visited."""
    from torch.nn.attention.flex_attention import BlockMask

    def indices(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = chosen.sum(-1).to(torch.int32)[None]  # [1, heads, query blocks]
        order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True)
        return counts, order.to(torch.int32)[None]  # chosen key blocks first

    partial, full = block_flags(fn, num_tokens, heads, device)
    kv_num, kv_idx = indices(partial)
    full_num, full_idx = indices(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK, fn, seq_lengths=(num_tokens, num_tokens)
    )


@plan_cache(16)
def flex_plan(pattern: Pattern, shape: tuple[int, ...], heads: int, device: torch.device):
    """The cached ``BlockMask`` of ``pattern`` on a grid of ``shape``."""
    grid = Grid(shape)
    fn = mask_mod(pattern, grid, heads, device)
    return block_mask(fn, grid.num_tokens, heads if pattern.head_dependent else 1, device)


@functools.cache
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    grid: Grid,
    scale: float,
) -> torch.Tensor:
    """q, k [B, heads, N, E], v [B, heads, N, Ev] -> [B, heads, N, Ev] through compiled
    FlexAttention (compiled once per shape by ``torch.compile``; block masks cached)."""
    reason = flex_unavailable(pattern, q.device, q.dtype, needs_grad(q, k, v))
    if reason is not None:
        raise ValueError(f"backend='flex' {reason}")
    mask = flex_plan(pattern, grid.shape, q.shape[1], q.device)
    try:
        return _compiled()(q, k, v, block_mask=mask, scale=scale)
    except Exception as err:  # inductor needs a working compiler toolchain
        first = (str(err).strip().splitlines() or [""])[0]
        raise RuntimeError(
            f"FlexAttention could not be compiled here ({type(err).__name__}: {first});"
            " use backend='auto'"
        ) from err
