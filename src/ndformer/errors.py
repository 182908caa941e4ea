"""ndformer's error types, the machine's memory, and up-front size guards.

Every error a user can cause is a ``ValueError`` (so ``except ValueError`` keeps
working); the subclasses say what kind it is, which the command line turns into an
exit code: a ``UsageError`` (a bad option or argument, exit 2) or a ``DataError`` (a
file that is unreadable, incomplete or inconsistent, exit 1). Messages name the
argument or file and what was expected, in one line.
"""

from __future__ import annotations

import os


class NdformerError(ValueError):
    """Base of ndformer's errors; ``exit_code`` is what the command line exits with."""

    exit_code = 1


class UsageError(NdformerError):
    """A bad option, argument or spec (exit code 2)."""

    exit_code = 2


class DataError(NdformerError):
    """A data file or run directory that cannot be used as it is (exit code 1)."""


def proc_bytes(path: str, key: str) -> int | None:
    """The ``key: N kB`` entry of a /proc file (``/proc/meminfo``, ``/proc/self/status``)
    in bytes, or None where there is no such file or entry."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int | None:
    """Bytes of memory the machine can still give (``MemAvailable``), or None if unknown."""
    free = proc_bytes("/proc/meminfo", "MemAvailable")
    if free is not None:
        return free
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``, up to TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_fits(what: str, nbytes: float, hint: str = "") -> None:
    """Raise ``UsageError`` before allocating ``nbytes`` for ``what`` if the machine has
    less memory available (nothing is refused where the amount is unknown)."""
    free = available_memory()
    if free is not None and nbytes > free:
        tail = f"; {hint}" if hint else ""
        raise UsageError(
            f"{what} needs about {format_bytes(nbytes)}, more than the"
            f" {format_bytes(free)} this machine has available{tail}"
        )
