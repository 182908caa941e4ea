"""Which backend ``attend(backend="auto")`` takes: ``AUTO_ORDER`` per device and the
walk through it (``choose``), and what ``ndformer info`` and the error messages report
from the same checks (``explain``, ``unsupported``, ``chosen``, ``describe``).

The backends themselves, and what each can do, are in ``backends.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .backends import BACKENDS, Backend, Call
from .kernels import native as native_kernels
from .layout import Grid, Points
from .patterns import HeadSplit, Pattern

#: ``auto``'s priority order per device type (others: "default"). On CUDA: NATTEN's fused
#: kernels for neighborhoods (when installed), FlexAttention for other masks that do not
#: partition the grid (its block mask cached per pattern and shape), flash / cuDNN SDPA on
#: gathered tiles for windows, stripes and axial attention, the block-sparse path last.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("keyset", "sdpa", "native", "groups", "scenes", "tiled", "blocksparse"),
    "cuda": ("keyset", "sdpa", "natten", "groups", "scenes", "flex", "tiled", "blocksparse"),
    "default": ("keyset", "sdpa", "groups", "scenes", "tiled", "blocksparse"),
}


#: ``auto``'s order inside ``portable()``: backends made of standard PyTorch operators only
#: (no ndformer custom op), for exporters that know no custom ops (ONNX).
PORTABLE_ORDER: tuple[str, ...] = ("keyset", "sdpa", "reference")

_portable = False


@contextlib.contextmanager
def portable() -> Iterator[None]:
    """Within this block ``attend(backend="auto")`` takes only backends made of standard
    PyTorch operators (``PORTABLE_ORDER``): separable local patterns through the tiled
    path, other mask patterns through the dense reference (an N x N mask constant), so
    that a traced model holds no ndformer custom op. Results are unchanged."""
    global _portable
    saved, _portable = _portable, True
    try:
        yield
    finally:
        _portable = saved


#: One object per state, holding the library it names (so no id is ever reused).
_states: dict[tuple[int, bool], tuple[object, bool]] = {}


def state() -> object:
    """What the backends' verdicts depend on besides the call (the native library as
    loaded, ``portable()``): one object per such state, so cached verdicts are keyed by
    it."""
    library = native_kernels.library()
    return _states.setdefault((id(library), _portable), (library, _portable))


def auto_order(device: torch.device) -> tuple[str, ...]:
    if _portable:
        return PORTABLE_ORDER
    return AUTO_ORDER.get(device.type, AUTO_ORDER["default"])


def choose(call: Call) -> Backend:
    """The backend ``auto`` runs for ``call`` (not a ``HeadSplit``: its groups choose alone)."""
    reasons = []
    for name in auto_order(call.device):
        backend = BACKENDS[name]
        reason = backend.verdict(call) or backend.declines(call)
        if reason is None:
            return backend
        reasons.append(f"{name}: {reason}")
    raise ValueError(f"no backend runs {call.pattern!r} on {call.layout!r}: " + "; ".join(reasons))


def explain(call: Call) -> list[tuple[str, str | None]]:
    """(backend name, None if it can run ``call`` exactly, else the reason it cannot) for
    every backend, ``auto``'s own order first. ``choose`` says which one ``auto`` takes."""
    order = auto_order(call.device)
    names = [*order, *(n for n in BACKENDS if n not in order)]
    return [(name, BACKENDS[name].verdict(call)) for name in names]


def unsupported(name: str, call: Call) -> str | None:
    """None if ``attend(..., backend=name)`` runs ``call`` (a ``HeadSplit`` whole, or head
    group by head group), else the reason it raises."""
    if name == "auto":
        return None
    reason = BACKENDS[name].verdict(call)
    if reason is None or not isinstance(call.pattern, HeadSplit):
        return reason
    groups = zip(call.pattern.patterns, call.pattern.head_groups(call.heads), strict=True)
    for part, (start, stop) in groups:
        if stop > start and (reason := unsupported(name, call.with_pattern(part, stop - start))):
            return reason
    return None


def chosen(call: Call) -> str:
    """What ``auto`` runs for ``call``, as text: a backend name, or the head groups' names
    (``"headsplit: native, keyset"``) for a ``HeadSplit``."""
    if isinstance(call.pattern, HeadSplit):
        parts = [
            chosen(call.with_pattern(p, stop - start))
            for p, (start, stop) in zip(
                call.pattern.patterns, call.pattern.head_groups(call.heads), strict=True
            )
            if stop > start
        ]
        return "headsplit: " + ", ".join(parts)
    return choose(call).name


def describe(
    pattern: Pattern | str,
    layout: Grid | Points | tuple[int, ...],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    heads: int = 4,
    head_dim: int = 32,
) -> dict[str, object]:
    """What ``attend`` does with ``pattern`` on ``layout`` (no tensors are made): the
    backend ``auto`` takes at inference and under autograd, and every backend's verdict
    (None = runs it) — what ``ndformer info`` prints."""
    from .layout import as_layout
    from .patterns import pattern as parse_pattern

    pattern, layout = parse_pattern(pattern), as_layout(layout)
    pattern.check(layout)
    result: dict[str, object] = {"pattern": repr(pattern)}
    for mode, grad in (("inference", False), ("training", True)):
        call = Call(pattern, layout, torch.device(device), dtype, heads, head_dim, grad)
        result[mode] = chosen(call)
        result[f"{mode} backends"] = {
            name: unsupported(name, call) for name in BACKENDS if name != "reference"
        }
    return result
