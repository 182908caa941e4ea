"""Generated abdominal-like volumes for dense 3-D segmentation (``organs3d``).

Each volume is a body (an ellipsoid of soft tissue in air) holding a large organ
(``liver``), two small paired organs made of nested ellipsoids (``kidney``: a bright
cortex around a darker core, both labelled kidney) and, in most cases, a small
hypo-intense ``lesion`` inside the liver. What makes it resemble medical data rather
than clean primitives: organ contrasts of a few noise levels only, per-case intensity
jitter, a smooth tissue texture, Gaussian noise, a multiplicative low-frequency bias
field (as MRI coils give), random poses and sizes, and a strong class imbalance
(background ~ 90% of the voxels, liver ~ 8%, kidneys ~ 1%, lesions ~ 0.1%).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .synthetic import _grid3

ORGAN_CLASSES = ("background", "liver", "kidney", "lesion")
#: Mean intensity of each tissue (before per-case jitter, texture, noise and bias).
TISSUE = {"air": -1.0, "body": 0.0, "liver": 0.35, "cortex": 0.6, "core": 0.3, "lesion": 0.1}


def _smooth_field(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    """Smooth random fields [n, size, size, size]: unit Gaussian noise on a ``cells``^3
    grid, upsampled trilinearly (a low-frequency texture or bias field)."""
    coarse = torch.from_numpy(rng.normal(size=(n, 1, cells, cells, cells)))
    return F.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=True)[
        :, 0
    ].numpy()


def _ellipsoid(
    grid: np.ndarray, centre: np.ndarray, radii: np.ndarray, rotation: np.ndarray
) -> np.ndarray:
    """Bool [n, *spatial]: inside the ellipsoid of each case (centre/radii [n, 3],
    rotation [n, 3, 3]) on ``grid`` [*spatial, 3] in [-1, 1]."""
    offset = grid[None] - centre[:, None, None, None, :]
    local = np.einsum("nxyzi,nij->nxyzj", offset, rotation)
    return ((local / radii[:, None, None, None, :]) ** 2).sum(-1) <= 1.0


def _tilts(rng: np.random.Generator, n: int, amount: float) -> np.ndarray:
    """Rotations [n, 3, 3] near the identity (QR of I + ``amount`` x Gaussian noise)."""
    q, r = np.linalg.qr(np.eye(3)[None] + amount * rng.normal(size=(n, 3, 3)))
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]


def _jitter(rng: np.random.Generator, n: int, base, spread) -> np.ndarray:
    """[n, 3]: ``base`` + uniform noise of ``spread`` per axis."""
    return np.asarray(base) + rng.uniform(-1, 1, size=(n, 3)) * np.asarray(spread)


def organs3d(n: int, size: int, seed: int, lesion_rate: float = 0.7):
    """``n`` volumes of ``size``^3 voxels with per-voxel organ labels (``ORGAN_CLASSES``).

    Returns volumes float16 [n, 1, size, size, size] and labels uint8
    [n, size, size, size]. Later structures occlude earlier ones (kidneys over the
    liver); a lesion (probability ``lesion_rate``) lies inside the liver only.
    """
    rng = np.random.default_rng(seed)
    grid = _grid3(size)
    tilt = 0.15  # organs are rotated by small random angles around their pose
    small = _tilts(rng, n, tilt)
    body = _ellipsoid(
        grid,
        _jitter(rng, n, 0.0, 0.05),
        _jitter(rng, n, (0.9, 0.75, 0.95), 0.05),
        small,
    )
    liver = body & _ellipsoid(
        grid,
        _jitter(rng, n, (-0.25, 0.1, 0.0), 0.08),
        _jitter(rng, n, (0.6, 0.5, 0.55), 0.06),
        _tilts(rng, n, tilt),
    )
    kidneys = np.zeros_like(liver)
    cores = np.zeros_like(liver)
    for side in (-1, 1):
        centre = _jitter(rng, n, (0.45, -0.3, 0.4 * side), 0.05)
        radii = _jitter(rng, n, (0.2, 0.15, 0.28), 0.03)
        turn = _tilts(rng, n, 2 * tilt)
        kidneys |= body & _ellipsoid(grid, centre, radii, turn)
        cores |= body & _ellipsoid(grid, centre, radii * 0.55, turn)
    has_lesion = rng.random(n) < lesion_rate
    lesion = (
        liver
        & _ellipsoid(
            grid,
            _jitter(rng, n, (-0.3, 0.1, 0.0), 0.25),
            np.repeat(rng.uniform(0.1, 0.18, size=(n, 1)), 3, axis=1),
            small,
        )
        & has_lesion[:, None, None, None]
    )
    labels = np.zeros((n, size, size, size), dtype=np.uint8)
    labels[liver] = 1
    labels[lesion] = 3
    labels[kidneys] = 2

    def level(tissue: str) -> np.ndarray:
        return (TISSUE[tissue] + rng.uniform(-0.08, 0.08, size=n))[:, None, None, None]

    volume = np.where(body, level("body"), TISSUE["air"])
    volume = np.where(liver, level("liver"), volume)
    volume = np.where(lesion, level("lesion"), volume)
    volume = np.where(kidneys, level("cortex"), volume)
    volume = np.where(cores, level("core"), volume)
    volume = volume + 0.08 * _smooth_field(rng, n, size, max(2, size // 4)) * body
    bias = np.exp(0.25 * _smooth_field(rng, n, size, 3))
    volume = (volume + 1.0) * bias - 1.0 + rng.normal(scale=0.1, size=volume.shape)
    return volume[:, None].astype(np.float16), labels
