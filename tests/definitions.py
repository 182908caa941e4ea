"""Pattern semantics written out independently of the library, in plain Python.

These are the issue's definitions transcribed literally, one (query, key)
coordinate pair at a time; the tests compare the library's masks and kernels
against masks built from them.
"""

from __future__ import annotations

import itertools
import math

import torch


def per_axis(value, ndim):
    return tuple(value) if isinstance(value, tuple) else (value,) * ndim


def window_ok(q, k, length, size, shift, dilation):
    cq, ck = q + shift, k + shift
    span = size * dilation
    return cq // span == ck // span and cq % dilation == ck % dilation


def neighborhood_ok(q, k, length, kernel, dilation, causal, stride=1):
    if q % dilation != k % dilation:
        return False
    jq, jk = q // dilation, k // dilation
    group_length = math.ceil((length - q % dilation) / dilation)
    group_start = jq - jq % stride  # the stride group shares the window of its leader
    if causal:
        leader = min(group_start + stride - 1, group_length - 1)
        return jk <= jq and leader - jk < kernel
    leader = min(group_start + stride // 2, group_length - 1)
    left = kernel // 2
    right = kernel // 2 - (1 if kernel % 2 == 0 else 0)
    centre = min(max(leader, left), group_length - 1 - right)
    return centre - left <= jk <= centre + right


def allowed(spec, qc, kc, shape, head):
    """spec: a nested tuple description (see tests/strategies.py); coordinates as tuples."""
    kind = spec[0]
    ndim = len(shape)
    if kind == "full":
        return True
    if kind == "window":
        _, size, shift, dilation = spec
        return all(
            window_ok(q, k, n, s, sh, d)
            for q, k, n, s, sh, d in zip(
                qc, kc, shape, per_axis(size, ndim), per_axis(shift, ndim), per_axis(dilation, ndim)
            )
        )
    if kind == "neighborhood":
        _, kernel, dilation, causal, stride = spec
        return all(
            neighborhood_ok(q, k, n, kk, d, c, s)
            for q, k, n, kk, d, c, s in zip(
                qc,
                kc,
                shape,
                per_axis(kernel, ndim),
                per_axis(dilation, ndim),
                per_axis(causal, ndim),
                per_axis(stride, ndim),
            )
        )
    if kind == "stripe":
        _, axis, width = spec
        axis %= ndim
        return all(a == axis or q // width == k // width for a, (q, k) in enumerate(zip(qc, kc)))
    if kind == "causal":
        _, axis = spec
        return kc[axis % ndim] <= qc[axis % ndim]
    if kind == "union":
        return any(allowed(s, qc, kc, shape, head) for s in spec[1])
    if kind == "intersection":
        return all(allowed(s, qc, kc, shape, head) for s in spec[1])
    if kind == "headsplit":
        _, parts, bounds = spec
        for part, (start, stop) in zip(parts, bounds):
            if start <= head < stop:
                return allowed(part, qc, kc, shape, head - start)
        raise AssertionError("head outside every group")
    raise AssertionError(kind)


def definition_mask(spec, shape, heads=1):
    """Bool [heads, N, N] from the definitions, by brute force over all pairs."""
    coords = list(itertools.product(*[range(n) for n in shape]))
    n = len(coords)
    mask = torch.zeros(heads, n, n, dtype=torch.bool)
    for h in range(heads):
        for i, qc in enumerate(coords):
            for j, kc in enumerate(coords):
                mask[h, i, j] = allowed(spec, qc, kc, shape, h)
    return mask
