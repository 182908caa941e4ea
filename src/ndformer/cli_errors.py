"""One error path for the whole command line.

Every command runs inside ``guarded``: a user error (``ValueError`` and its ndformer
subclasses, ``OSError`` on a named file, memory exhaustion, Ctrl-C) becomes one plain
line on stderr (never interpreted as markup, so ``[...]`` survives) and an exit code:
2 for usage errors, 1 for failures, 130 for an interrupt. A traceback is printed only
with ``ndformer --debug ...`` or ``NDFORMER_DEBUG=1``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import typer

from .errors import NdformerError, UsageError

DEBUG_ENV = "NDFORMER_DEBUG"


def debugging() -> bool:
    """Whether tracebacks are wanted (``--debug`` or ``NDFORMER_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def describe(error: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) of an exception raised by a command."""
    if isinstance(error, NdformerError):
        return error.exit_code, _one_line(error)
    if isinstance(error, ValueError):
        return 2, _one_line(error)
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        return 1, f"{error.strerror or error}{where}"
    if isinstance(error, MemoryError):
        return 1, "out of memory; try a smaller batch, shape or model"
    if isinstance(error, RecursionError):
        return 2, "input nested too deeply"
    return 1, (
        f"internal error ({type(error).__name__}: {_one_line(error)}); run again with"
        " ndformer --debug ... for the traceback and please report it"
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def report(message: str) -> None:
    """Print ``error: message`` on stderr, as plain text."""
    typer.echo(f"error: {message}", err=True)


def guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command: errors -> one line on stderr and an exit code (see the module)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            if debugging():
                raise
            typer.echo("interrupted", err=True)
            raise typer.Exit(code=130) from None
        except Exception as error:  # the command boundary: every failure ends here
            if debugging() or _is_click_error(error):
                raise
            code, message = describe(error)
            report(message)
            raise typer.Exit(code=code) from None

    return run


def _is_click_error(error: BaseException) -> bool:
    """Typer's own usage errors (bad option values) keep their standard rendering."""
    return type(error).__module__.startswith("typer")


def fail(message: str) -> None:
    """Raise a ``UsageError`` with ``message`` (exit code 2)."""
    raise UsageError(message)
