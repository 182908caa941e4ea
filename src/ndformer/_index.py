"""Index helpers shared by the patterns (definitions) and the kernels (fast paths).

Everything here is N-D by construction: per-axis pieces are combined across axes, so
no caller writes code for a particular number of dimensions.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence

import torch


def row_major_strides(shape: Sequence[int]) -> list[int]:
    """Token-index strides of a row-major grid (the last axis varies fastest):
    token = sum(coord[a] * strides[a])."""
    return [math.prod(shape[a + 1 :]) for a in range(len(shape))]


def axis_outer(
    parts: Sequence[torch.Tensor],
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lead: int = 0,
) -> torch.Tensor:
    """Combine one tensor per axis into their outer product under ``op``.

    ``parts[a]`` has shape ``[*lead_dims, d_a^1, ..., d_a^k]``; the result has shape
    ``[*lead_dims, prod_a d_a^1, ..., prod_a d_a^k]`` where each product dimension is
    flattened row-major over axes (axis 0 slowest), i.e. the token order of a grid.
    ``lead_dims`` are shared (broadcast), not combined.
    """
    n = len(parts)
    k = parts[0].dim() - lead
    result = None
    for axis, part in enumerate(parts):
        shape = list(part.shape[:lead]) + [1] * (n * k)
        for j in range(k):
            shape[lead + j * n + axis] = part.shape[lead + j]
        view = part.reshape(shape)
        result = view if result is None else op(result, view)
    lead_shape = list(result.shape[:lead])
    sizes = [math.prod(p.shape[lead + j] for p in parts) for j in range(k)]
    full = lead_shape + [p.shape[lead + j] for j in range(k) for p in parts]
    return result.expand(full).reshape(lead_shape + sizes)


def flat_index(per_axis: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    """Row-major token index from per-axis coordinate tensors combined by ``axis_outer``."""
    strides = row_major_strides(shape)
    return axis_outer([c * s for c, s in zip(per_axis, strides, strict=True)], operator.add)


def partition_ids(columns: torch.Tensor) -> torch.Tensor:
    """Ids [N] numbering the distinct rows of integer ``columns`` [N, c] (equal rows, equal
    ids). Packs the rows into one int64 key when their ranges fit 63 bits (a 1-D unique
    is much faster than a row-wise one), else falls back to ``unique(dim=0)``."""
    shifted = columns - columns.min(0).values
    spans = (shifted.max(0).values + 1).tolist()
    if math.prod(spans) < 2**63:
        key = torch.zeros(len(columns), dtype=torch.long, device=columns.device)
        for axis, span in enumerate(spans):
            key = key * span + shifted[:, axis]
        return torch.unique(key, return_inverse=True)[1]
    return torch.unique(columns, dim=0, return_inverse=True)[1]
