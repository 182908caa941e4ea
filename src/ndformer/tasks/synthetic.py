"""Procedurally generated tasks: pathfinder (any ndim), shapes3d, scenes3d.

Every generator is a pure function of its arguments and a seed (numpy's PCG64),
so a task name plus a seed always gives the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Pathfinder difficulty levels: number of paths (one carries the markers when the
#: label is 1; the rest are distractors), path length in units of the image size,
#: and the turning noise per step.
PATHFINDER_LEVELS = {
    "easy": dict(paths=2, length=0.7, turn=0.12),
    "medium": dict(paths=3, length=1.3, turn=0.3),
    "hard": dict(paths=4, length=1.8, turn=0.35),
}


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    v = rng.normal(size=shape)
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-9)


def _walk(
    rng: np.random.Generator, start: np.ndarray, steps: int, turn: float, size: int
) -> np.ndarray:
    """Smooth random walks with unit steps, reflected at the borders.

    ``start`` [..., ndim] -> positions [..., steps + 1, ndim] (floats in [0, size - 1]).
    """
    pos, direction = start.astype(np.float64), _unit(rng, start.shape)
    out = [pos]
    high = size - 1.0
    for _ in range(steps):
        direction = direction + turn * rng.normal(size=direction.shape)
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True).clip(1e-9)
        pos = pos + direction
        below, above = pos < 0, pos > high
        pos = np.where(below, -pos, np.where(above, 2 * high - pos, pos))
        direction = np.where(below | above, -direction, direction)
        out.append(pos)
    return np.stack(out, axis=-2)


def _blocks(points: np.ndarray, shape: tuple[int, ...], radius: int) -> np.ndarray:
    """Bool [n, *shape]: the (2 * radius + 1)**ndim block around each point [n, ndim], clipped."""
    n, ndim = points.shape
    out = np.zeros((n, *shape), dtype=bool)
    offsets = np.stack(np.meshgrid(*[np.arange(-radius, radius + 1)] * ndim, indexing="ij"), -1)
    coords = np.rint(points)[:, None, :].astype(np.int64) + offsets.reshape(1, -1, ndim)
    coords = np.clip(coords, 0, np.array(shape) - 1)
    out[(np.repeat(np.arange(n), coords.shape[1]), *coords.reshape(-1, ndim).T)] = True
    return out


def _raster(walks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Bool [n, *shape]: the voxels the walks [n, steps, ndim] pass through."""
    n, ndim = walks.shape[0], walks.shape[-1]
    cells = np.rint(walks).astype(np.int64).reshape(n, -1, ndim)
    out = np.zeros((n, *shape), dtype=bool)
    out[(np.repeat(np.arange(n), cells.shape[1]), *cells.reshape(-1, ndim).T)] = True
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Grow bool [n, *spatial] by one voxel along every axis and diagonal (3**ndim block)."""
    out = mask.copy()
    for axis in range(1, mask.ndim):
        lead = (slice(None),) * axis
        grown = out.copy()
        grown[(*lead, slice(1, None))] |= out[(*lead, slice(None, -1))]
        grown[(*lead, slice(None, -1))] |= out[(*lead, slice(1, None))]
        out = grown
    return out


def _pathfinder_attempt(rng, labels, size, ndim, params):
    """One try for every sample: (images uint8 [n, 2, ...], ok bool [n])."""
    n, shape, margin = len(labels), (size,) * ndim, 2.0
    steps = max(4, int(params["length"] * size))
    starts = rng.uniform(margin, size - 1 - margin, size=(n, params["paths"], ndim))
    walks = [_walk(rng, starts[:, p], steps, params["turn"], size) for p in range(params["paths"])]
    first, last = walks[0][:, 0], walks[0][:, -1]
    # Path 1 starts as far from path 0's start as path 0's own end is, in a random
    # direction that stays inside the image (both labels: same geometry).
    distance = np.linalg.norm(last - first, axis=-1)
    tries = first[:, None] + distance[:, None, None] * _unit(rng, (n, 16, ndim))
    inside = ((tries >= margin) & (tries <= size - 1 - margin)).all(-1)
    ok = inside.any(axis=1)
    start = np.clip(tries[np.arange(n), inside.argmax(axis=1)], 0, size - 1)  # (ok=False: redrawn)
    walks[1] = _walk(rng, start, steps, params["turn"], size)
    second = np.where((labels == 1)[:, None], last, walks[1][:, 0])
    paths = [_raster(w, shape) for w in walks]
    marker_a, marker_b = _blocks(first, shape, 1), _blocks(second, shape, 1)
    positive = (labels == 1).reshape(-1, *[1] * ndim)
    marked = paths[0] | marker_a | (marker_b & positive)
    others = np.logical_or.reduce(paths[1:]) | (marker_b & ~positive)
    # The marked path must not touch any other path: connectivity then decides the label.
    ok &= ~(_dilate(marked) & others).reshape(n, -1).any(axis=1)
    images = np.stack([np.logical_or.reduce(paths), marker_a | marker_b], axis=1)
    return images.astype(np.uint8), ok


def pathfinder(
    n: int, size: int, ndim: int, level: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pathfinder in ``ndim`` dimensions: are the two markers ends of the same path?

    Returns images uint8 [n, 2, size, ..., size] (channel 0: paths, channel 1: the
    two markers, 3**ndim blocks) and labels int64 [n] (1: same path). Every sample
    has the same number of smooth random-walk paths; path 1 starts as far from path
    0's start as path 0's end is. Label 1 marks both ends of path 0; label 0 marks
    the start of path 0 and the start of path 1. So the markers' distance and the
    picture's statistics are the same for both labels, and samples where the marked
    path touches another path are drawn again: only following the path decides.
    """
    if level not in PATHFINDER_LEVELS:
        raise ValueError(
            f"pathfinder level must be one of {list(PATHFINDER_LEVELS)}, got {level!r}"
        )
    params = PATHFINDER_LEVELS[level]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    images = np.zeros((n, 2, *[size] * ndim), dtype=np.uint8)
    pending = np.arange(n)
    for _ in range(200):
        attempt, ok = _pathfinder_attempt(rng, labels[pending], size, ndim, params)
        images[pending[ok]] = attempt[ok]
        pending = pending[~ok]
        if not pending.size:
            break
    else:
        raise ValueError(
            f"pathfinder: could not place non-touching paths at size {size} in {ndim}-D"
            f" (level {level!r}); use a larger size"
        )
    return images, labels.astype(np.int64)


@dataclass(frozen=True)
class Primitive:
    name: str
    inside: object  # callable(p [..., 3]) -> bool [...]


def _radial(p: np.ndarray) -> np.ndarray:
    return np.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2)


PRIMITIVES = (
    Primitive("sphere", lambda p: np.linalg.norm(p, axis=-1) <= 0.85),
    Primitive("cube", lambda p: np.abs(p).max(axis=-1) <= 0.6),
    Primitive("cylinder", lambda p: (_radial(p) <= 0.5) & (np.abs(p[..., 2]) <= 0.8)),
    Primitive(
        "cone",
        lambda p: (np.abs(p[..., 2]) <= 0.8) & (_radial(p) <= 0.7 * (0.8 - p[..., 2]) / 1.6),
    ),
    Primitive("torus", lambda p: (_radial(p) - 0.6) ** 2 + p[..., 2] ** 2 <= 0.25**2),
    Primitive("octahedron", lambda p: np.abs(p).sum(axis=-1) <= 0.95),
)


def _rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniformly random 3-D rotation matrices [n, 3, 3] (QR of a Gaussian, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    return q


def _place(
    rng: np.random.Generator, grid: np.ndarray, kinds: np.ndarray, scale: tuple, centre: np.ndarray
) -> np.ndarray:
    """Occupancy [n, *spatial] of one primitive per sample, random rotation and scale.

    ``grid`` [*spatial, 3] voxel centres; ``centre`` [n, 3] object centres.
    """
    n = len(kinds)
    rot = _rotations(rng, n)
    s = rng.uniform(*scale, size=(n, 1, 1, 1, 1))
    offset = grid[None] - centre[:, None, None, None, :]
    local = np.einsum("nij,nxyzj->nxyzi", rot.transpose(0, 2, 1), offset) / s
    occupied = np.zeros(local.shape[:-1], dtype=bool)
    for index, primitive in enumerate(PRIMITIVES):
        chosen = kinds == index
        if chosen.any():
            occupied[chosen] = primitive.inside(local[chosen])
    return occupied


def _grid3(size: int) -> np.ndarray:
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)


def shapes3d(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One primitive per volume at a random rotation, scale and offset, plus noise.

    Returns volumes float16 [n, 1, size, size, size] and class labels int64 [n]
    (indices into ``PRIMITIVES``).
    """
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, len(PRIMITIVES), size=n)
    centre = rng.uniform(-0.15, 0.15, size=(n, 3))
    occupied = _place(rng, _grid3(size), kinds, scale=(0.55, 0.85), centre=centre)
    noise = rng.normal(scale=rng.uniform(0.05, 0.3, size=(n, 1, 1, 1)), size=occupied.shape)
    volumes = occupied * rng.uniform(0.7, 1.0, size=(n, 1, 1, 1)) + noise
    return volumes[:, None].astype(np.float16), kinds.astype(np.int64)


def scenes3d(n: int, size: int, seed: int, objects=(2, 4)) -> tuple[np.ndarray, np.ndarray]:
    """Several primitives per volume; per-voxel labels (0 background, 1 + primitive index).

    Returns volumes float16 [n, 1, size, size, size] and labels int64 [n, size, size, size].
    Later objects occlude earlier ones, so every voxel has one label.
    """
    rng = np.random.default_rng(seed)
    grid = _grid3(size)
    labels = np.zeros((n, size, size, size), dtype=np.int64)
    volumes = np.zeros((n, size, size, size), dtype=np.float64)
    count = rng.integers(objects[0], objects[1] + 1, size=n)
    for slot in range(objects[1]):
        kinds = rng.integers(0, len(PRIMITIVES), size=n)
        centre = rng.uniform(-0.55, 0.55, size=(n, 3))
        occupied = _place(rng, grid, kinds, scale=(0.25, 0.4), centre=centre)
        occupied &= (slot < count)[:, None, None, None]
        labels = np.where(occupied, kinds[:, None, None, None] + 1, labels)
        brightness = rng.uniform(0.6, 1.0, size=(n, 1, 1, 1))
        volumes = np.where(occupied, brightness, volumes)
    volumes += rng.normal(scale=0.15, size=volumes.shape)
    return volumes[:, None].astype(np.float16), labels


#: The classes of ``blob_shapes``: (name, axis scales of the blob's ellipsoid).
BLOB_SHAPES = (("ball", (1.0, 1.0, 1.0)), ("disc", (1.5, 1.5, 0.45)), ("rod", (0.5, 0.5, 1.8)))


def blob_shapes(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A soft, noisy 3-D blob per volume whose class is its shape: a ball, a flat disc or
    a rod (``BLOB_SHAPES``), at a random rotation, size, position and brightness, over a
    random background level with Gaussian noise. The MedMNIST-3D-like data of the
    "train on your own data" example (``scripts/make_blobs3d.py``).

    Returns volumes float32 [n, size, size, size] and class labels int64 [n].
    """
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, len(BLOB_SHAPES), size=n)
    axes = np.array([scale for _, scale in BLOB_SHAPES])[kinds]  # [n, 3]
    radius = rng.uniform(0.3, 0.4, size=(n, 1)) * axes
    centre = rng.uniform(-0.3, 0.3, size=(n, 3))
    rot = _rotations(rng, n)
    offset = _grid3(size)[None] - centre[:, None, None, None, :]
    local = np.einsum("nij,nxyzj->nxyzi", rot.transpose(0, 2, 1), offset)
    distance = np.sqrt(((local / radius[:, None, None, None, :]) ** 2).sum(-1))
    blob = 1.0 / (1.0 + np.exp(4.0 * (distance - 1.0)))  # soft edge
    brightness = rng.uniform(0.6, 1.2, size=(n, 1, 1, 1))
    background = rng.uniform(-0.2, 0.2, size=(n, 1, 1, 1))
    noise = rng.normal(scale=rng.uniform(0.05, 0.2, size=(n, 1, 1, 1)), size=blob.shape)
    return (blob * brightness + background + noise).astype(np.float32), kinds.astype(np.int64)
