"""Caching of plans (index tensors, masks) that must outlive the call that built them."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def plan_cache(maxsize: int) -> Callable[[F], F]:
    """``functools.lru_cache`` whose values are built outside inference mode.

    A plan first built inside ``torch.inference_mode()`` would otherwise hold
    inference tensors, which autograd refuses to save when the same plan is
    reused in training.
    """

    def decorate(build: F) -> F:
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(build)
        def cached(*args, **kwargs):
            with torch.inference_mode(False):
                return build(*args, **kwargs)

        return cached  # type: ignore[return-value]

    return decorate


def cache_root() -> Path:
    """Where ndformer keeps files it builds (tasks, compiled kernels): ``$NDFORMER_CACHE``
    or ``~/.cache/ndformer``."""
    return Path(os.environ.get("NDFORMER_CACHE") or Path.home() / ".cache" / "ndformer")


def kernel_cache() -> Path:
    """Where the compiled native kernels go: ``$NDFORMER_KERNEL_CACHE`` or
    ``cache_root() / "kernels"`` (a separate variable keeps one build while the task
    cache moves, as the tests' private caches do)."""
    return Path(os.environ.get("NDFORMER_KERNEL_CACHE") or cache_root() / "kernels")
