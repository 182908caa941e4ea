"""Argument checks shared by the public API: one place for the error messages."""

from __future__ import annotations

from collections.abc import Sequence

import torch

IntOrTuple = int | tuple[int, ...]


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) >= ``minimum``, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_per_axis(name: str, value: object, minimum: int | None = None) -> IntOrTuple:
    """Validate an int-or-per-axis-tuple argument; returns it unchanged (lists become tuples)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) == 0:
            raise ValueError(f"{name} must be an int or a non-empty tuple of ints, got {value!r}")
        return tuple(check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(value))
    return check_int(name, value, minimum)


def check_bool_per_axis(name: str, value: object) -> bool | tuple[bool, ...]:
    """Validate a bool-or-per-axis-tuple-of-bools argument."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) == 0 or not all(isinstance(v, bool) for v in value):
            raise ValueError(f"{name} must be a bool or a non-empty tuple of bools, got {value!r}")
        return tuple(value)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool or a tuple of bools, got {value!r}")
    return value


def per_axis(name: str, value: int | bool | tuple, ndim: int) -> tuple:
    """Expand an int (or bool) to ``ndim`` copies; check a tuple has exactly ``ndim`` entries."""
    if isinstance(value, tuple):
        if len(value) != ndim:
            raise ValueError(
                f"{name} has {len(value)} entries {value!r} but the layout has {ndim} axes"
            )
        return value
    return (value,) * ndim


def check_axis(name: str, axis: int, ndim: int) -> int:
    """Normalise a possibly negative axis index against ``ndim`` axes."""
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name}={axis} is outside a layout with {ndim} axes (valid: 0..{ndim - 1})"
        )
    return axis % ndim


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Will autograd want gradients through an op on these tensors?"""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def check_device(text: str, option: str = "--device") -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` -> a ``torch.device`` that exists on this machine;
    a ``UsageError`` naming ``option`` otherwise (also for devices without data, like meta)."""
    from .errors import UsageError

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"{option} must be like cpu, cuda or cuda:1; got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"{option} {text!r}: only cpu and cuda devices are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"{option} {text!r} was asked for but CUDA is not available"
                f" (torch {torch.__version__})"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"{option} {text!r}: this machine has {count} CUDA device(s)")
    return device
