"""``eager_under_compile``: run a function outside ``torch.compile``'s graph (a graph
break) without importing ``torch._dynamo`` up front (about 2 s, which every command-line
start would pay): dynamo is only consulted once something has loaded it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_disabled: dict[Callable, Callable] = {}


def eager_under_compile(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` as ``torch.compiler.disable(fn)`` once torch._dynamo is loaded, else as is.

    For data-dependent work (sparse points: sorting, grouping, plans built in numpy) that
    dynamo cannot trace: under ``torch.compile`` it runs eagerly between graphs."""

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is None:  # nothing compiles without dynamo
            return fn(*args, **kwargs)
        disabled = _disabled.get(fn)
        if disabled is None:
            disabled = _disabled[fn] = dynamo.disable(fn)
        return disabled(*args, **kwargs)

    return inner


def assume_constant_result(fn: Callable[..., T]) -> Callable[..., T]:
    """``torch.compiler.assume_constant_result`` without its import of ``torch._dynamo``:
    that function only sets this marker, which dynamo reads when it traces a call; dynamo
    then calls ``fn`` at trace time and keeps its result (plain values, or a tensor as a
    graph constant) out of the graph (``tests/test_compile.py`` checks that compiled models
    still have no graph break)."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn
