"""Spec strings -> patterns, without ``eval``.

Grammar (a subset of Python expression syntax, parsed with ``ast``)::

    spec   := spec "|" spec | spec "&" spec | "(" spec ")" | call | name
    call   := name "(" [value ("," value)*] [("," name "=" value)*] ")"
    value  := spec | int | float | bool | string | "(" value, ... ")"

Examples: ``"full"``, ``"window(8, shift=4)"``, ``"neighborhood((7, 5), dilation=2)"``,
``"headsplit(stripe(0, 7), stripe(1, 7))"``, ``"window(8) | axial(0)"``.
"""

from __future__ import annotations

import ast
import inspect
import math

from ..errors import UsageError
from .base import REGISTRY, Pattern, list_patterns

#: Limits of a spec string: characters, nesting depth of its expression, and integers.
MAX_SPEC_LENGTH = 2000
MAX_SPEC_DEPTH = 40
MAX_SPEC_INT = 2**31 - 1


def signature(name: str) -> str:
    """``window(size, shift=0, dilation=1)``: how to call a registered pattern."""
    params = []
    for p in inspect.signature(REGISTRY[name]).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            params.append(f"*{p.name}")
        elif p.default is p.empty:
            params.append(p.name)
        else:
            params.append(f"{p.name}={p.default!r}")
    return f"{name}({', '.join(params)})"


def _error(text: str, problem: str) -> ValueError:
    return UsageError(
        f"invalid pattern spec {text!r}: {problem}. Valid patterns: {', '.join(list_patterns())}"
    )


def _lookup(name: str, text: str):
    key = name.lower()
    if key not in REGISTRY:
        raise _error(text, f"unknown pattern {name!r}")
    return key, REGISTRY[key]


def _value(node: ast.AST, text: str) -> object:
    if isinstance(node, ast.Constant) and isinstance(node.value, bool | int | float | str):
        value = node.value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SPEC_INT:
            raise _error(text, f"the integer {str(value)[:12]}... is out of range (at most"
                               f" {MAX_SPEC_INT})")  # fmt: skip
        if isinstance(value, float) and not math.isfinite(value):
            raise _error(text, f"{value} is not a finite number")
        return value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _value(node.operand, text)
        if isinstance(inner, bool) or not isinstance(inner, int | float):
            raise _error(text, "a sign applies only to numbers")
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Tuple | ast.List):
        return tuple(_value(e, text) for e in node.elts)
    return _pattern(node, text)


def _pattern(node: ast.AST, text: str) -> Pattern:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr | ast.BitAnd):
        left, right = _pattern(node.left, text), _pattern(node.right, text)
        return left | right if isinstance(node.op, ast.BitOr) else left & right
    if isinstance(node, ast.Name):
        return _build(node.id, (), {}, text)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords
        ):
            raise _error(text, "*args and **kwargs are not allowed")
        names = [k.arg for k in node.keywords]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise _error(text, f"keyword {repeated[0]!r} given more than once")
        args = tuple(_value(a, text) for a in node.args)
        kwargs = {k.arg: _value(k.value, text) for k in node.keywords}
        return _build(node.func.id, args, kwargs, text)
    raise _error(text, f"unexpected {ast.unparse(node)!r} (expected a pattern such as window(8))")


def _build(name: str, args: tuple, kwargs: dict, text: str) -> Pattern:
    key, factory = _lookup(name, text)
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as err:
        raise _error(text, f"bad arguments for {key}: {err}; expected {signature(key)}") from None
    try:
        result = factory(*args, **kwargs)
    except ValueError as err:
        raise _error(text, str(err)) from None
    if not isinstance(result, Pattern):  # pragma: no cover - registry holds pattern factories
        raise _error(text, f"{key} did not produce a pattern")
    return result


def pattern(spec: str | Pattern) -> Pattern:
    """Parse a spec string such as ``"neighborhood(7, dilation=2)"`` into a pattern.

    A pattern object is returned unchanged. Names are case-insensitive. Unknown
    names and bad arguments raise ``ValueError`` naming the problem and listing
    the valid patterns. The string is parsed, never evaluated.
    """
    if isinstance(spec, Pattern):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"pattern must be a spec string or a Pattern, got {spec!r}")
    text = spec.strip()
    if not text:
        raise _error(spec, "empty spec")
    if len(text) > MAX_SPEC_LENGTH:
        raise UsageError(
            f"invalid pattern spec {text[:40]!r}...: {len(text)} characters, at most"
            f" {MAX_SPEC_LENGTH}"
        )
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise _error(spec, f"syntax error ({getattr(err, 'msg', err)})") from None
    depth = _depth(tree.body)
    if depth > MAX_SPEC_DEPTH:
        raise _error(spec, f"nested {depth} deep, at most {MAX_SPEC_DEPTH}")
    return _pattern(tree.body, spec)


def _depth(root: ast.AST) -> int:
    """Nesting depth of an expression tree (iterative: no recursion limit)."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest
