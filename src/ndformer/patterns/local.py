"""Local patterns: Full, Window, Stripe/Axial, Causal, Neighborhood.

Each is an AND over axes of a 1-D rule (see ``axis.py``); the class docstrings
state the exact semantics, with ``q`` and ``k`` a query's and a key's
coordinate on one axis and ``L`` that axis' length.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._checks import (
    IntOrTuple,
    check_axis,
    check_bool_per_axis,
    check_int,
    check_per_axis,
    per_axis,
)
from ..layout import Grid
from .axis import AllRule, AxisRule, CausalRule, NeighborhoodRule, PartitionRule
from .base import Separable, format_call, register


def _non_default(**pairs: tuple[object, object]) -> dict[str, object]:
    """Keyword arguments whose value differs from its default: name=(value, default)."""
    return {name: value for name, (value, default) in pairs.items() if value != default}


@register("full")
@dataclass(frozen=True, repr=False)
class Full(Separable):
    """Every query attends to every key (global attention)."""

    def axis_rules(self, layout: Grid) -> tuple[AxisRule, ...]:
        return (AllRule(),) * layout.ndim

    def __repr__(self) -> str:
        return "full"


@register("window")
@dataclass(frozen=True, repr=False)
class Window(Separable):
    """Non-overlapping windows, optionally shifted and dilated.

    Per axis, with ``c' = c + shift``: attend iff ``c' // (size*dilation)`` and
    ``c' % dilation`` are equal for q and k, on every axis.

    - ``Window(8)``: Swin windows; ``Window(8, shift=4)``: shifted windows, without
      wrap-around (border windows are partial);
    - ``Window(size, dilation=L // size)``: MaxViT grid attention;
    - sizes need not divide the grid: border windows are simply smaller.

    Every argument is an int (all axes) or a per-axis tuple.
    """

    size: IntOrTuple
    shift: IntOrTuple = 0
    dilation: IntOrTuple = 1

    def __init__(self, size: IntOrTuple, shift: IntOrTuple = 0, dilation: IntOrTuple = 1) -> None:
        object.__setattr__(self, "size", check_per_axis("Window size", size, minimum=1))
        object.__setattr__(self, "shift", check_per_axis("Window shift", shift))
        object.__setattr__(self, "dilation", check_per_axis("Window dilation", dilation, minimum=1))

    def axis_rules(self, layout: Grid) -> tuple[AxisRule, ...]:
        n = layout.ndim
        return tuple(
            PartitionRule(block=s, dilation=d, shift=sh)
            for s, sh, d in zip(
                per_axis("Window size", self.size, n),
                per_axis("Window shift", self.shift, n),
                per_axis("Window dilation", self.dilation, n),
                strict=True,
            )
        )

    def __repr__(self) -> str:
        kwargs = _non_default(shift=(self.shift, 0), dilation=(self.dilation, 1))
        return format_call("window", (self.size,), kwargs)


@register("stripe")
@dataclass(frozen=True, repr=False)
class Stripe(Separable):
    """CSWin-style stripe: the whole of ``axis``; on every other axis ``q // width == k // width``.

    ``axis`` may be negative (counted from the last axis); an axis outside the
    layout is a ``ValueError`` when the pattern meets the layout.
    """

    axis: int
    width: int = 1

    def __init__(self, axis: int, width: int = 1) -> None:
        object.__setattr__(self, "axis", check_int("Stripe axis", axis))
        object.__setattr__(self, "width", check_int("Stripe width", width, minimum=1))

    def axis_rules(self, layout: Grid) -> tuple[AxisRule, ...]:
        axis = check_axis("Stripe axis", self.axis, layout.ndim)
        return tuple(
            AllRule() if a == axis else PartitionRule(block=self.width) for a in range(layout.ndim)
        )

    def __repr__(self) -> str:
        if self.width == 1:
            return format_call("axial", (self.axis,))
        return format_call("stripe", (self.axis, self.width))


@register("axial")
def Axial(axis: int) -> Stripe:
    """Axial attention along ``axis``: ``Stripe(axis, 1)`` (same object, same equality)."""
    return Stripe(axis, 1)


@register("causal")
@dataclass(frozen=True, repr=False)
class Causal(Separable):
    """Attend iff ``k <= q`` on ``axis`` (e.g. time in video); every key on the other axes."""

    axis: int = 0

    def __init__(self, axis: int = 0) -> None:
        object.__setattr__(self, "axis", check_int("Causal axis", axis))

    def axis_rules(self, layout: Grid) -> tuple[AxisRule, ...]:
        axis = check_axis("Causal axis", self.axis, layout.ndim)
        return tuple(CausalRule() if a == axis else AllRule() for a in range(layout.ndim))

    def __repr__(self) -> str:
        return format_call("causal", (self.axis,) if self.axis != 0 else ())


@register("neighborhood")
@dataclass(frozen=True, repr=False)
class Neighborhood(Separable):
    """Neighborhood attention (NATTEN semantics, generalized with its ``stride``), per axis:

    - only keys of the query's dilation group: ``q % dilation == k % dilation``;
    - within the group (index ``j = c // dilation``, group length
      ``Lg = ceil((L - c % dilation) / dilation)``) queries fall into stride groups of
      ``stride`` consecutive indices, and every query of a group takes the window of the
      group's leader ``a``: its centre ``(j // stride) * stride + stride // 2`` (right of
      centre for an even stride), at most ``Lg - 1``. The window has ``left = kernel // 2``
      and ``right = kernel // 2 - (1 if kernel is even else 0)``; its centre is
      ``clamp(a, left, Lg - 1 - right)``; attend iff ``centre - left <= k // dilation <=
      centre + right``. So every query sees exactly ``kernel`` keys per axis: windows shift
      inward at borders. With ``stride == kernel`` (odd) the windows do not overlap;
    - causal axes: the leader is the group's last index (at most ``Lg - 1``); attend iff
      ``k // d <= q // d`` and ``a - k // d < kernel``.

    ``kernel * dilation`` larger than an axis, or ``stride`` outside ``1..kernel``, is a
    ``ValueError``. ``kernel``, ``dilation``, ``causal`` and ``stride`` take one value or a
    per-axis tuple; ``stride=1`` is plain neighborhood attention.
    """

    kernel: IntOrTuple
    dilation: IntOrTuple = 1
    causal: bool | tuple[bool, ...] = False
    stride: IntOrTuple = 1

    def __init__(
        self,
        kernel: IntOrTuple,
        dilation: IntOrTuple = 1,
        causal: bool | tuple[bool, ...] = False,
        stride: IntOrTuple = 1,
    ) -> None:
        object.__setattr__(self, "kernel", check_per_axis("Neighborhood kernel", kernel, minimum=1))
        object.__setattr__(
            self, "dilation", check_per_axis("Neighborhood dilation", dilation, minimum=1)
        )
        object.__setattr__(self, "causal", check_bool_per_axis("Neighborhood causal", causal))
        object.__setattr__(self, "stride", check_per_axis("Neighborhood stride", stride, minimum=1))

    def axis_rules(self, layout: Grid) -> tuple[AxisRule, ...]:
        n = layout.ndim
        kernels = per_axis("Neighborhood kernel", self.kernel, n)
        dilations = per_axis("Neighborhood dilation", self.dilation, n)
        causals = per_axis("Neighborhood causal", self.causal, n)
        strides = per_axis("Neighborhood stride", self.stride, n)
        for axis, (kernel, dilation, stride, length) in enumerate(
            zip(kernels, dilations, strides, layout.shape, strict=True)
        ):
            if kernel * dilation > length:
                raise ValueError(
                    f"Neighborhood kernel * dilation = {kernel} * {dilation} = {kernel * dilation}"
                    f" exceeds axis {axis} of length {length} (layout shape {layout.shape})"
                )
            if stride > kernel:
                raise ValueError(
                    f"Neighborhood stride {stride} exceeds the kernel {kernel} on axis {axis}"
                    f" (layout shape {layout.shape}): a stride group must share one window"
                )
        return tuple(
            NeighborhoodRule(kernel=k, dilation=d, causal=c, stride=s)
            for k, d, c, s in zip(kernels, dilations, causals, strides, strict=True)
        )

    def __repr__(self) -> str:
        kwargs = _non_default(dilation=(self.dilation, 1), causal=(self.causal, False),
                              stride=(self.stride, 1))  # fmt: skip
        return format_call("neighborhood", (self.kernel,), kwargs)
