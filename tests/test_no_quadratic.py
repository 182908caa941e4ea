"""Fast paths never allocate an N x N tensor: every tensor made in forward and backward is small."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ndformer import Grid, Points, attend
from ndformer.patterns import (
    Causal,
    Flattened,
    HeadSplit,
    HiLo,
    Linear,
    Neighborhood,
    Pooled,
    Routing,
    Serialized,
    Stripe,
    Summary,
    Window,
)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize(
    ("pattern", "backend"),
    [
        (Window(8, shift=3), "auto"),
        (Neighborhood(7, dilation=2), "auto"),
        (Stripe(0, 4), "auto"),
        (Causal(0), "auto"),
        (Window(6) | Stripe(1, 2), "auto"),
        (HeadSplit(Neighborhood(5), Causal(1)), "auto"),
        (Neighborhood(5), "blocksparse"),
        (Pooled(4), "auto"),  # N * N/16 scores: the definition's own cost
        (Summary(8, 8), "auto"),
        (Routing(8, 4), "auto"),
        (Linear(), "auto"),
        (HiLo(8), "auto"),
    ],
    ids=repr,
)
def test_no_tensor_of_n_squared_elements(pattern, backend):
    grid = Grid((48, 48))  # N = 2304, N^2 = 5.3M
    n = grid.num_tokens
    q, k, v = (torch.randn(1, 2, n, 8, requires_grad=True) for _ in range(3))
    # The first call also builds the tiling plan, which must be small as well.
    for _ in range(2):
        with LargestTensor() as probe:
            attend(q, k, v, pattern, grid, backend=backend).sum().backward()
        assert probe.largest < n * n / 4, f"largest tensor {probe.largest} vs N^2 = {n * n}"


@pytest.mark.parametrize(
    "pattern",
    [Serialized("hilbert", 64), Flattened(6, 64), Window(6), Stripe(0, 2) & Window(12), Pooled(4)],
    ids=repr,
)
def test_no_tensor_of_n_squared_elements_on_points(pattern):
    from ndformer.points_data import surface_voxels

    points = Points(surface_voxels(2304, seed=1), batch=torch.arange(2304) % 2)  # 2 scenes
    n = points.num_tokens
    q, k, v = (torch.randn(1, 2, n, 8, requires_grad=True) for _ in range(3))
    with LargestTensor() as probe:
        attend(q, k, v, pattern, points).sum().backward()
    assert probe.largest < n * n / 4, f"largest tensor {probe.largest} vs N^2 = {n * n}"
