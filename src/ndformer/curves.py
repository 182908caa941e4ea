"""Space-filling-curve codes for integer coordinates in any number of dimensions
(``ndformer.serialize``).

Sorting tokens by these codes puts tokens that are close in space close in the
sequence; ``Serialized`` attention then attends within equal-size groups of the
sorted sequence (Point Transformer V3). Orders:

- ``z``: Morton order, the bits of the coordinates interleaved (axis 0 most
  significant within each bit level). Monotone in every coordinate.
- ``hilbert``: the Hilbert curve, by Skilling's transpose construction
  ("Programming the Hilbert curve", 2004), for any ndim: consecutive codes on a
  full ``2**bits`` grid are neighbours (L1 distance 1).
- ``z-trans`` / ``hilbert-trans``: the same with the first two axes swapped.
"""

from __future__ import annotations

import torch

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")


def bits_needed(coords: torch.Tensor) -> int:
    """The fewest bits per axis that hold every coordinate (at least 1)."""
    return max(1, int(coords.max()).bit_length()) if coords.numel() else 1


def serialize(
    coords: torch.Tensor,
    order: str = "hilbert",
    bits: int | None = None,
    batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """int64 curve codes of integer points.

    Args:
        coords: [N, ndim] integers in ``[0, 2**bits)`` (any ndim >= 1).
        order: one of ``z``, ``z-trans``, ``hilbert``, ``hilbert-trans``.
        bits: bits per axis (default: the fewest that hold ``coords``).
        batch: optional [N] scene index; it becomes the most significant bits,
            so codes of different scenes never interleave.

    Returns [N] int64: ``batch << (ndim * bits) | curve code``. Raises ``ValueError``
    if a coordinate is negative or does not fit ``bits``, or if ``ndim * bits`` plus
    the batch's bits exceed 63.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
    coords = torch.as_tensor(coords)
    if coords.dim() != 2 or coords.dtype.is_floating_point or coords.dtype == torch.bool:
        raise ValueError(
            f"coords must be an integer tensor [N, ndim], got {tuple(coords.shape)} {coords.dtype}"
        )
    n, ndim = coords.shape
    if bits is None:
        bits = bits_needed(coords)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be an int >= 1, got {bits!r}")
    coords = coords.long()
    if n and (bool((coords < 0).any()) or int(coords.max()) >= 2**bits):
        axis = int(((coords < 0) | (coords >= 2**bits)).any(0).nonzero()[0])
        low, high = int(coords[:, axis].min()), int(coords[:, axis].max())
        raise ValueError(
            f"coords on axis {axis} span [{low}, {high}], outside [0, 2**{bits}) for"
            f" bits={bits} (coords {tuple(coords.shape)})"
        )
    batch_bits = 0
    if batch is not None:
        batch = torch.as_tensor(batch, device=coords.device).long()
        if batch.shape != (n,):
            raise ValueError(f"batch must be [N] = [{n}], got {tuple(batch.shape)}")
        if n and bool((batch < 0).any()):
            raise ValueError(f"batch indices must be >= 0, got minimum {int(batch.min())}")
        batch_bits = bits_needed(batch)
    if ndim * bits + batch_bits > 63:
        raise ValueError(
            f"{ndim} axes x {bits} bits + {batch_bits} batch bits = {ndim * bits + batch_bits}"
            " bits do not fit an int64 code (63 bits): use fewer bits (coarser coordinates)"
        )
    if order.endswith("-trans"):
        if ndim < 2:
            raise ValueError(f"order {order!r} swaps the first two axes; coords have {ndim}")
        coords = coords[:, [1, 0, *range(2, ndim)]]
    if order.startswith("hilbert"):
        coords = _hilbert_transpose(coords, bits)
    code = _interleave(coords, bits)
    if batch is not None:
        code = code | (batch << (ndim * bits))
    return code


def _interleave(coords: torch.Tensor, bits: int) -> torch.Tensor:
    """Bit ``b`` of axis ``a`` goes to bit ``b * ndim + (ndim - 1 - a)`` of the code."""
    ndim = coords.shape[1]
    code = torch.zeros(coords.shape[0], dtype=torch.long, device=coords.device)
    for b in range(bits):
        for a in range(ndim):
            code |= ((coords[:, a] >> b) & 1) << (b * ndim + ndim - 1 - a)
    return code


def _hilbert_transpose(coords: torch.Tensor, bits: int) -> torch.Tensor:
    """Skilling's axes-to-transpose step: coordinates whose interleaved bits are the
    Hilbert index. Vectorised over points; loops over bit levels and axes."""
    x = [coords[:, a].clone() for a in range(coords.shape[1])]
    ndim = len(x)
    # Undo the excess work of each level: invert or exchange low bits per axis.
    level = 1 << (bits - 1)
    while level > 1:
        low = level - 1
        for a in range(ndim):
            high_set = (x[a] & level) != 0
            swap = (x[0] ^ x[a]) & low
            x0_if_inverted = x[0] ^ low
            if a == 0:
                x[0] = torch.where(high_set, x0_if_inverted, x[0])
                continue
            x[0], x[a] = (
                torch.where(high_set, x0_if_inverted, x[0] ^ swap),
                torch.where(high_set, x[a], x[a] ^ swap),
            )
        level >>= 1
    # Gray-encode.
    for a in range(1, ndim):
        x[a] = x[a] ^ x[a - 1]
    flips = torch.zeros_like(x[0])
    level = 1 << (bits - 1)
    while level > 1:
        flips = torch.where((x[ndim - 1] & level) != 0, flips ^ (level - 1), flips)
        level >>= 1
    return torch.stack([xa ^ flips for xa in x], dim=1)
