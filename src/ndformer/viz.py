"""Pictures of patterns: which keys one query sees, or how many keys every query sees.

``pattern_view`` computes what to draw (pure torch, no plotting library);
``plot_pattern`` draws it with matplotlib (installed with ``ndformer[all]``).
Grids of 3 or more axes are drawn as 2-D slices over their last two axes, one
panel per index of the leading axes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ._checks import check_int
from ._index import row_major_strides
from .errors import check_fits
from .layout import Grid, as_layout
from .patterns import HeadSplit, Pattern
from .patterns import pattern as parse_pattern
from .patterns.compose import _Combination

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Most panels (slices) drawn for a grid with 3 or more axes.
MAX_PANELS = 16


def default_heads(pattern: Pattern) -> int:
    """The fewest heads that every ``HeadSplit`` inside ``pattern`` can divide evenly."""
    if isinstance(pattern, HeadSplit):
        return len(pattern.patterns) * math.lcm(*(default_heads(p) for p in pattern.patterns))
    if isinstance(pattern, _Combination):
        return math.lcm(*(default_heads(p) for p in pattern.parts))
    return 1


def parse_coords(text: str | tuple[int, ...], layout: Grid, name: str = "query") -> tuple[int, ...]:
    """``"5,5"`` (or a tuple) -> a coordinate inside ``layout``; ValueError otherwise."""
    if isinstance(text, str):
        try:
            coords = tuple(int(c) for c in text.replace("x", ",").split(","))
        except ValueError:
            raise ValueError(
                f"{name} must be comma-separated integers like 5,5; got {text!r}"
            ) from None
    else:
        coords = tuple(text)
    if len(coords) != layout.ndim:
        raise ValueError(
            f"{name} {coords} has {len(coords)} coordinates but the layout {layout.shape}"
            f" has {layout.ndim} axes"
        )
    for axis, (c, n) in enumerate(zip(coords, layout.shape, strict=True)):
        if not 0 <= c < n:
            raise ValueError(f"{name} coordinate {c} on axis {axis} is outside 0..{n - 1}")
    return coords


def parse_shape(text: str) -> tuple[int, ...]:
    """``"32x32"`` or ``"16,16,16"`` -> a shape tuple; ValueError otherwise."""
    try:
        shape = tuple(int(s) for s in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise ValueError(f"shape must look like 32x32 or 16x16x16; got {text!r}") from None
    return Grid(shape).shape


@dataclass(frozen=True)
class PatternView:
    """What ``show`` draws: a grid-shaped map and the numbers printed beside it.

    ``values`` has the grid's shape: for a query, 1 at attended keys and 0
    elsewhere; for the density view, the number of keys each query attends to.
    """

    pattern: Pattern
    layout: Grid
    head: int
    heads: int
    query: tuple[int, ...] | None
    values: torch.Tensor
    key_counts: torch.Tensor  # [N], keys per query for the head shown

    @property
    def pairs(self) -> int:
        return int(self.key_counts.sum())

    @property
    def density(self) -> float:
        """Fraction of all (query, key) pairs attended."""
        return self.pairs / self.layout.num_tokens**2

    def summary(self) -> str:
        n = self.layout.num_tokens
        lines = [
            f"pattern {self.pattern!r} on grid {'x'.join(map(str, self.layout.shape))} (N = {n})"
        ]
        if self.pattern.head_dependent:
            lines.append(f"head {self.head} of {self.heads} (the pattern differs between heads)")
        if self.query is not None:
            keys = int(self.values.sum())
            lines.append(f"query {self.query} attends to {keys} keys ({100 * keys / n:.2f}% of N)")
        counts = self.key_counts.double()
        low, mean, high = int(counts.min()), float(counts.mean()), int(counts.max())
        lines.append(f"keys per query: min {low}, mean {mean:.1f}, max {high}")
        lines.append(f"density: {100 * self.density:.3f}% ({self.pairs} of {n * n} pairs)")
        return "\n".join(lines)

    def panels(self) -> list[tuple[str, torch.Tensor]]:
        """(title, 2-D map) per slice over the leading axes, at most MAX_PANELS."""
        values = self.values
        if values.dim() == 1:
            return [("", values[None, :])]
        lead = values.shape[:-2]
        names = [f"axis {a}" for a in range(len(lead))]
        indices = list(itertools.product(*[range(n) for n in lead]))
        if self.query is not None:
            touched = [i for i in indices if values[i].any()]
            indices = touched or indices
        if len(indices) > MAX_PANELS:
            step = (len(indices) - 1) / (MAX_PANELS - 1)
            indices = [indices[round(i * step)] for i in range(MAX_PANELS)]
        return [
            (", ".join(f"{n}={i}" for n, i in zip(names, index, strict=True)), values[index])
            for index in indices
        ]

    def text(self, max_width: int = 64) -> str | None:
        """A character picture of the query's slice (Q query, # key, . other), if small."""
        if self.query is None:
            return None
        plane = self.values if self.values.dim() == 1 else self.values[self.query[:-2]]
        plane = plane.reshape(-1, plane.shape[-1])
        if plane.shape[-1] > max_width or plane.shape[0] > max_width:
            return None
        rows = [["#" if v else "." for v in row.tolist()] for row in plane]
        if self.values.dim() == 1:
            rows[0][self.query[0]] = "Q"
        else:
            rows[self.query[-2]][self.query[-1]] = "Q"
        return "\n".join(" ".join(r) for r in rows)


def pattern_view(
    pattern: Pattern | str,
    layout: Grid | tuple[int, ...],
    query: tuple[int, ...] | str | None = None,
    head: int = 0,
    heads: int | None = None,
) -> PatternView:
    """Compute the keys of ``query`` (or keys per query when ``query`` is None) for one head."""
    pattern, layout = parse_pattern(pattern), as_layout(layout)
    if heads is not None:
        check_int("heads", heads, minimum=1)
    heads = heads if heads is not None else default_heads(pattern)
    n = layout.num_tokens
    need = n * 8 * (layout.ndim + 4) + 1024 * n * heads
    grid = "x".join(map(str, layout.shape))
    check_fits(f"showing a {grid} grid ({n} tokens)", need, "choose a smaller --shape")
    if not 0 <= head < heads:
        raise ValueError(f"head {head} is outside 0..{heads - 1} (heads={heads})")
    counts = pattern.key_counts(layout, heads=heads)
    counts = counts[head if counts.shape[0] > 1 else 0]
    if query is None:
        values = counts.view(layout.shape)
    else:
        query = parse_coords(query, layout)
        index = sum(c * s for c, s in zip(query, row_major_strides(layout.shape), strict=True))
        rows = pattern.effective_rows(layout, torch.tensor([index]), heads)
        values = rows[head if rows.shape[0] > 1 else 0, 0].view(layout.shape)
    return PatternView(pattern, layout, head, heads, query, values, counts)


def plot_pattern(view: PatternView) -> Figure:
    """A matplotlib figure of ``view``: one panel per 2-D slice."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    panels = view.panels()
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 3.2 * rows + 0.8), squeeze=False, layout="constrained"
    )
    vmax = max(1, int(view.values.max()))
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    image = None
    aspect = "auto" if view.values.dim() == 1 else "equal"
    for ax, (title, plane) in zip(axes.flat, panels, strict=False):
        if view.query is None:
            image = ax.imshow(plane.numpy(), cmap="viridis", vmin=0, vmax=vmax, aspect=aspect)
        else:
            ax.imshow(
                plane.numpy(),
                cmap=ListedColormap(["#f4f4f4", "#2c7fb8"]),
                vmin=0,
                vmax=1,
                aspect=aspect,
            )
            if view.values.dim() == 1 or title == _query_title(view):
                y, x = (0, view.query[0]) if view.values.dim() == 1 else view.query[-2:]
                ax.plot(x, y, marker="s", color="#e6550d", markersize=6, linestyle="none")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if view.query is None and image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="keys per query")
        what = "keys per query"
    else:
        keys = int(view.values.sum())
        what = f"keys of query {view.query} ({keys}, orange: the query)"
    head = f", head {view.head}/{view.heads}" if view.pattern.head_dependent else ""
    fig.suptitle(
        f"{view.pattern!r} on {'x'.join(map(str, view.layout.shape))}{head}\n{what}", fontsize=10
    )
    return fig


def _query_title(view: PatternView) -> str:
    lead = view.query[:-2]
    return ", ".join(f"axis {a}={i}" for a, i in enumerate(lead))


def plot_point_labels(
    xyz: torch.Tensor | Any,
    panels: dict[str, Any],
    class_names: list[str] | None = None,
) -> Figure:
    """Point clouds seen from above, one panel per labelling (e.g. ``{"prediction": pred,
    "ground truth": label}``), coloured by class, higher points drawn on top; a
    legend names the classes that occur."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    from .tasks.points import label_colours

    xyz = np.asarray(xyz)
    order = np.argsort(xyz[:, 2], kind="stable")
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.6 * len(panels), 5.0), squeeze=False, layout="constrained"
    )
    seen: set[int] = set()
    for ax, (title, labels) in zip(axes.flat, panels.items(), strict=True):
        labels = np.asarray(labels)
        ax.scatter(*xyz[order, :2].T, c=label_colours(labels[order]) / 255, s=1.5, linewidths=0)
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        seen |= set(labels.tolist())
    names = class_names or [str(c) for c in range(max(seen) + 1)]
    handles = [
        Patch(color=label_colours(np.array([c]))[0] / 255, label=names[c])
        for c in sorted(seen)
        if c >= 0
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(8, len(handles)), fontsize=8)
    return fig


def plot_volume_labels(
    volume: Any,
    panels: dict[str, Any],
    class_names: list[str] | None = None,
) -> Figure:
    """The middle slice of a 3-D ``volume`` [X, Y, Z] across each axis (rows), in grey,
    next to each labelling in ``panels`` ({"prediction": labels [X, Y, Z], ...}) drawn
    over it in class colours (class 0, the background, left clear); a legend names the
    classes that occur."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    from .tasks.points import label_colours

    volume = np.asarray(volume, dtype=np.float32)
    low, high = np.percentile(volume, [1, 99])
    columns = 1 + len(panels)
    fig, axes = plt.subplots(3, columns, figsize=(3.0 * columns, 8.4), squeeze=False,
                             layout="constrained")  # fmt: skip
    seen: set[int] = set()
    for axis in range(3):
        middle = volume.shape[axis] // 2
        image = np.take(volume, middle, axis=axis)
        axes[axis, 0].imshow(image.T, cmap="gray", vmin=low, vmax=high, origin="lower")
        axes[axis, 0].set_ylabel(f"axis {axis} = {middle}", fontsize=9)
        for column, labels in enumerate(panels.values(), start=1):
            cut = np.asarray(np.take(np.asarray(labels), middle, axis=axis)).astype(np.int64)
            colours = np.concatenate(
                [label_colours(cut.ravel()) / 255, (cut.ravel() > 0)[:, None] * 0.55], axis=1
            ).reshape(*cut.shape, 4)
            axes[axis, column].imshow(image.T, cmap="gray", vmin=low, vmax=high, origin="lower")
            axes[axis, column].imshow(colours.transpose(1, 0, 2), origin="lower")
            seen |= set(np.unique(cut).tolist())
    for column, title in enumerate(["volume", *panels], start=0):
        axes[0, column].set_title(title, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    names = class_names or [str(c) for c in range(max(seen) + 1)]
    handles = [
        Patch(color=label_colours(np.array([c]))[0] / 255, label=names[c])
        for c in sorted(seen - {0})
        if c < len(names)
    ]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)))
    return fig
