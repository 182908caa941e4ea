"""Generated 4-D series (volumes over time) whose class only the time axis reveals.

``moving_blobs``: Gaussian blobs drifting through a periodic volume in one of 6
directions. Every generator is a pure function of its arguments and a seed (numpy's
PCG64), like ``tasks.synthetic``.
"""

from __future__ import annotations

import numpy as np

#: The classes of ``moving_blobs``: the direction of motion, (axis, sign) per class.
DIRECTIONS = (("+x", 0, 1), ("-x", 0, -1), ("+y", 1, 1), ("-y", 1, -1), ("+z", 2, 1), ("-z", 2, -1))


def _periodic_profile(centre: np.ndarray, sigma: np.ndarray, size: int) -> np.ndarray:
    """exp(-d**2 / (2 sigma**2)) with d the distance on a ring of ``size`` voxels from each
    voxel centre to ``centre``; ``centre`` and ``sigma`` broadcast, result [..., size]."""
    voxels = np.arange(size)
    offset = (voxels - centre[..., None] + size / 2) % size - size / 2
    return np.exp(-(offset**2) / (2 * sigma[..., None] ** 2)).astype(np.float32)


def moving_blobs(
    n: int,
    size: int,
    frames: int,
    seed: int,
    blobs: tuple[int, int] = (1, 3),
    speed: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Volumes over time: 1-3 (``blobs``) Gaussian blobs moving together, plus noise.

    Returns float32 [n, 1, size, size, size, frames] (axes x, y, z, t) and int64 labels
    [n], indices into ``DIRECTIONS``: every blob of a sample drifts along that axis and
    sign by ``speed`` voxels per frame, wrapping around the volume's borders. The volume
    is periodic and the blobs start anywhere, so every single frame has the same
    distribution for all 6 classes: only comparing frames tells the class (the frames in
    reverse order are a sample of the opposite direction).
    Blob widths (sigma 1 to 1.6 voxels), brightnesses, background level and noise level
    vary per sample.
    """
    if size < 4 or frames < 2:
        raise ValueError(f"moving_blobs needs size >= 4 and frames >= 2, got {size}, {frames}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(DIRECTIONS), size=n)
    count = rng.integers(blobs[0], blobs[1] + 1, size=n)
    velocity = np.zeros((n, 3))
    axes = np.array([axis for _, axis, _ in DIRECTIONS])[labels]
    signs = np.array([sign for _, _, sign in DIRECTIONS])[labels]
    velocity[np.arange(n), axes] = signs * speed
    volumes = np.zeros((n, frames, size, size, size), dtype=np.float32)
    t = np.arange(frames)
    for slot in range(blobs[1]):
        start = rng.uniform(0, size, size=(n, 3))
        sigma = rng.uniform(1.0, 1.6, size=(n, 1))
        brightness = (rng.uniform(0.6, 1.2, size=n) * (slot < count)).astype(np.float32)
        centres = start[:, None, :] + velocity[:, None, :] * t[None, :, None]  # [n, frames, 3]
        gx, gy, gz = (_periodic_profile(centres[..., a], sigma, size) for a in range(3))
        blob = gx[..., :, None, None] * gy[..., None, :, None] * gz[..., None, None, :]
        volumes += brightness[:, None, None, None, None] * blob
    volumes += rng.uniform(-0.2, 0.2, size=(n, 1, 1, 1, 1)).astype(np.float32)  # background
    level = rng.uniform(0.05, 0.2, size=(n, 1, 1, 1, 1)).astype(np.float32)
    volumes += rng.standard_normal(size=volumes.shape, dtype=np.float32) * level
    series = np.moveaxis(volumes, 1, -1)  # [n, x, y, z, t]
    return np.ascontiguousarray(series[:, None]), labels.astype(np.int64)
