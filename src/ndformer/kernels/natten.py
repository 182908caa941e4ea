"""Delegation to NATTEN's fused kernels (``natten.na1d/na2d/na3d``) on CUDA, when NATTEN is
installed: neighborhoods (dilated, causal, strided) and windows that tile their axes
exactly, mapped onto NATTEN's arguments.

The mapping is the part that can be wrong, so it is a pure function (``natten_arguments``)
tested without NATTEN; where NATTEN is installed (its CPU path runs forward only), the
delegated calls are tested to equal ndformer's reference. NATTEN is never a dependency.

- ``Neighborhood(kernel, dilation, causal, stride)``: the same semantics, argument for
  argument (ndformer's definition follows NATTEN's, stride included);
- ``Window(size, dilation=d)`` without shift, when ``size * d`` divides every axis:
  NATTEN's ``stride == kernel_size == size`` with ``dilation = d`` — each stride group is
  one window and its neighborhood is exactly that window. (Non-dividing or shifted windows
  have partial border windows, which NATTEN's inward-shifting neighborhoods are not.)
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from .._checks import per_axis
from ..layout import Grid
from ..patterns import Neighborhood, Pattern, Window
from .merge import lse_dtype

#: NATTEN's functional API covers 1-D to 3-D.
MAX_NDIM = 3
#: Conservative limits of NATTEN's fused CUDA kernels (checked again by scripts/gpu_check.py).
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


@functools.cache
def natten_installed() -> bool:
    return importlib.util.find_spec("natten") is not None


def natten_arguments(pattern: Pattern, grid: Grid) -> dict | str:
    """NATTEN's ``kernel_size``, ``stride``, ``dilation``, ``is_causal`` (per-axis tuples)
    computing exactly ``pattern`` on ``grid``, or the reason there are none."""
    n = grid.ndim
    if n > MAX_NDIM:
        return f"covers 1-D to 3-D grids; {grid.shape} has {n} axes"
    if isinstance(pattern, Neighborhood):
        arguments = {
            "kernel_size": per_axis("kernel", pattern.kernel, n),
            "stride": per_axis("stride", pattern.stride, n),
            "dilation": per_axis("dilation", pattern.dilation, n),
            "is_causal": per_axis("causal", pattern.causal, n),
        }
    elif isinstance(pattern, Window):
        size, shift = per_axis("size", pattern.size, n), per_axis("shift", pattern.shift, n)
        dilation = per_axis("dilation", pattern.dilation, n)
        if any(shift):
            return f"maps unshifted windows only; {pattern!r} is shifted"
        if any(length % (s * d) for length, s, d in zip(grid.shape, size, dilation, strict=True)):
            return (
                f"maps windows that tile every axis exactly; {pattern!r} on {grid.shape} has"
                " partial border windows"
            )
        arguments = {"kernel_size": size, "stride": size, "dilation": dilation,
                     "is_causal": (False,) * n}  # fmt: skip
    else:
        return f"maps neighborhoods and windows; {pattern!r} is neither"
    if min(arguments["kernel_size"]) < 2:
        return f"takes kernel sizes >= 2 (NATTEN's limit); {pattern!r} has 1"
    return arguments


def natten_unavailable(
    pattern: Pattern, grid: Grid, device: torch.device, dtype: torch.dtype, head_dim: int
) -> str | None:
    """None if NATTEN's fused kernels can run ``pattern`` here, else the reason."""
    if not natten_installed():
        return "needs NATTEN (pip install natten), which is not installed"
    if device.type != "cuda":
        return (
            f"runs NATTEN's fused CUDA kernels; the inputs are on {device} (NATTEN's CPU path"
            " is an unfused forward-only fallback)"
        )
    if dtype not in DTYPES:
        return f"takes float16, bfloat16 or float32; the inputs are {dtype}"
    if head_dim % 8 or head_dim > MAX_HEAD_DIM:
        return f"takes head_dim a multiple of 8 up to {MAX_HEAD_DIM}; got {head_dim}"
    arguments = natten_arguments(pattern, grid)
    return arguments if isinstance(arguments, str) else None


def natten_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    grid: Grid,
    scale: float,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, heads, N, E], v [B, heads, N, Ev] -> [B, heads, N, Ev] (and the log-sum-exp
    [B, heads, N] if ``return_lse``) through ``natten.na{ndim}d`` with the arguments of
    ``natten_arguments``; NATTEN picks its own kernel for the device."""
    import natten

    arguments = natten_arguments(pattern, grid)
    if isinstance(arguments, str):
        raise ValueError(f"backend='natten' {arguments}")
    b, h, n = q.shape[:3]

    def to_natten(x: torch.Tensor) -> torch.Tensor:  # [B, *spatial, heads, E]
        return x.transpose(1, 2).reshape(b, *grid.shape, h, x.shape[-1])

    function = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[grid.ndim]
    result = function(to_natten(q), to_natten(k), to_natten(v), scale=scale,
                      return_lse=return_lse, **arguments)  # fmt: skip
    out, lse = result if return_lse else (result, None)
    out = out.reshape(b, n, h, v.shape[-1]).transpose(1, 2)
    if not return_lse:
        return out
    return out, lse.reshape(b, n, h).transpose(1, 2).to(lse_dtype(q.dtype))
