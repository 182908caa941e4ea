"""The CUDA backend policy, checked without a GPU: which backend ``auto`` takes for each
pattern on CUDA (with and without NATTEN installed), NATTEN's argument mapping, and —
where NATTEN is installed (its CPU path runs forward only) — that the mapped calls equal
ndformer's reference. ``scripts/gpu_check.py`` runs the same contracts on a GPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ndformer import Grid, attend
from ndformer.backends import Call
from ndformer.choice import chosen, describe
from ndformer.kernels import natten as natten_kernels
from ndformer.kernels.natten import natten_arguments
from ndformer.patterns import Neighborhood, Window
from ndformer.patterns import pattern as parse

CUDA = torch.device("cuda")  # a device object needs no GPU: only the policy is exercised


def on_cuda(spec, shape, grad=False, dtype=torch.float16, head_dim=32, lse=False) -> str:
    call = Call(parse(spec), Grid(shape), CUDA, dtype, 4, head_dim, grad, lse)
    return chosen(call)


@pytest.mark.parametrize("natten", [True, False])
def test_the_choice_on_cuda(monkeypatch, natten):
    monkeypatch.setattr(natten_kernels, "natten_installed", lambda: natten)
    neighborhood = "natten" if natten else "flex"
    table = {
        ("full", (32, 32)): "sdpa",
        ("pooled(2)", (32, 32)): "keyset",
        ("neighborhood(7)", (32, 32)): neighborhood,
        ("neighborhood(3, dilation=2, causal=(True, False))", (16, 16)): neighborhood,
        ("neighborhood(5, stride=2)", (8, 8, 8)): neighborhood,
        ("neighborhood(3)", (6, 6, 6, 6)): "flex",  # NATTEN has no 4-D
        ("window(8)", (32, 32)): "tiled",  # flash SDPA per window
        ("window(8, shift=4)", (32, 32)): "tiled",
        ("axial(0)", (32, 32)): "tiled",
        ("stripe(1, 4)", (32, 32)): "tiled",
        ("neighborhood(3) | causal(0)", (16, 16)): "flex",
        ("causal(0)", (64,)): "flex",
    }
    for (spec, shape), want in table.items():
        assert on_cuda(spec, shape) == want, (spec, shape)
        assert on_cuda(spec, shape, grad=True) == want, (spec, shape)  # both train on CUDA
    # outside NATTEN's limits a neighborhood goes to FlexAttention
    assert on_cuda("neighborhood(7)", (32, 32), head_dim=12) == "flex"
    assert on_cuda("neighborhood(7)", (32, 32), dtype=torch.float64) == "flex"
    # a head split chooses per head group
    assert on_cuda("headsplit(window(4), neighborhood(3))", (16, 16)) == (
        f"headsplit: tiled, {neighborhood}"
    )


def test_natten_is_never_chosen_on_cpu_and_says_why(monkeypatch):
    monkeypatch.setattr(natten_kernels, "natten_installed", lambda: True)
    verdicts = describe("neighborhood(7)", (32, 32))["training backends"]
    assert "fused CUDA kernels; the inputs are on cpu" in verdicts["natten"]
    monkeypatch.setattr(natten_kernels, "natten_installed", lambda: False)
    q = k = v = torch.randn(1, 2, 64, 8)
    with pytest.raises(ValueError, match="backend='natten' needs NATTEN"):
        attend(q, k, v, "neighborhood(3)", (8, 8), backend="natten")


def test_natten_argument_mapping():
    grid = Grid((12, 16))
    assert natten_arguments(Neighborhood(5, dilation=(1, 2), causal=(True, False), stride=2),
                            grid) == {"kernel_size": (5, 5), "stride": (2, 2),
                                      "dilation": (1, 2), "is_causal": (True, False)}  # fmt: skip
    # a window that tiles every axis: stride == kernel == size, its dilation kept
    assert natten_arguments(Window((4, 8)), grid) == {
        "kernel_size": (4, 8), "stride": (4, 8), "dilation": (1, 1), "is_causal": (False, False)
    }  # fmt: skip
    assert natten_arguments(Window(2, dilation=3), Grid((12, 6)))["dilation"] == (3, 3)
    assert "partial border windows" in natten_arguments(Window(5), grid)
    assert "shifted" in natten_arguments(Window(4, shift=2), grid)
    assert "1-D to 3-D" in natten_arguments(Neighborhood(3), Grid((4, 4, 4, 4)))
    assert "neither" in natten_arguments(parse("axial(0)"), grid)
    assert "kernel sizes >= 2" in natten_arguments(Window((1, 4)), grid)


@st.composite
def natten_cases(draw):
    """Patterns NATTEN maps, on grids where the neighborhood or window is smaller than the
    grid (NATTEN turns a kernel covering the whole grid into plain attention, whose causal
    form it cannot run on CPU)."""
    ndim = draw(st.integers(1, 3))
    if draw(st.booleans()):  # a neighborhood
        shape = tuple(draw(st.integers(3, 9)) for _ in range(ndim))
        kernel = draw(st.integers(2, min(shape) - 1))
        return Neighborhood(kernel, stride=draw(st.integers(1, kernel)),
                            causal=draw(st.booleans())), shape  # fmt: skip
    size = tuple(draw(st.integers(2, 4)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    repeats = [draw(st.integers(1, 3)) for _ in range(ndim)]
    repeats[0] = max(repeats[0], 2)  # at least two windows
    shape = tuple(s * d * r for s, d, r in zip(size, dilation, repeats, strict=True))
    return Window(size, dilation=dilation), shape


@settings(max_examples=30, deadline=None)
@given(case=natten_cases(), seed=st.integers(0, 99))
def test_natten_delegation_equals_the_reference(case, seed):
    """NATTEN on CPU (its forward-only Flex path, float32) with the mapped arguments gives
    ndformer's reference output and log-sum-exp."""
    pytest.importorskip("natten", reason="NATTEN (the oracle) is not installed")
    pattern, shape = case
    grid = Grid(shape)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, grid.num_tokens, 8, generator=gen) for _ in range(3))
    with torch.no_grad():
        out, lse = natten_kernels.natten_attention(q, k, v, pattern, grid, 0.4, return_lse=True)
        want, want_lse = attend(q, k, v, pattern, grid, scale=0.4, backend="reference",
                                return_lse=True)  # fmt: skip
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lse, want_lse, rtol=1e-4, atol=1e-5)
