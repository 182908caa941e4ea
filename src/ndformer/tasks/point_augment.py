"""Augmentation of point scenes for training, each step drawn from a ``torch.Generator``.

- ``InstanceAugment``: Volt's per-object augmentation (each selected furniture instance
  turned, flipped, scaled and shifted about its own base, or dropped) plus colour
  dropout; it needs instance ids and runs first.
- ``Augment3D``: the whole scene rotated about z, scaled, jittered, flipped, thinned.
- ``mix_scenes``: Mix3D's scene mixing of a batch's scenes in pairs.

Coordinates are [n, d] with the up axis last; every point keeps its label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .scenes import FLOOR, WALL


@dataclass
class InstanceAugment:
    """Volt's instance augmentation. Each instance (an object: the points sharing an
    instance id) none of whose points has a ``structural`` class is selected with the
    probability given to the call; a selected one is dropped (all its points and labels)
    with probability ``drop``, else moved rigidly about its base (the horizontal mean of
    its points at its lowest height, so it still stands where it stood): a turn about the
    up axis by a uniform angle of at most ``rotate`` x pi either way (in the plane of the
    first two axes; 0.25 and the 0.1 m ``shift`` are Volt's settings), a flip of each
    horizontal axis with probability 1/2 (``flip``), one isotropic factor from ``scale``
    and a uniform horizontal shift of up to ``shift`` metres per axis. Then, with
    probability ``colour_dropout`` per scene, every feature (the colours) is set to 0,
    so that the geometry alone must tell the classes apart. Unselected and structural
    points are returned bit for bit; the random draws per scene depend only on its
    number of instances. A scene without instance ids (``instance`` None: user data,
    whose objects are not known) gets the colour dropout alone."""

    structural: tuple[int, ...] = (FLOOR, WALL)
    rotate: float = 0.25
    flip: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.1
    drop: float = 0.1
    colour_dropout: float = 0.2

    def __call__(
        self,
        xyz: torch.Tensor,
        features: torch.Tensor,
        label: torch.Tensor,
        instance: torch.Tensor | None,
        probability: float,
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One scene: xyz float [n, d], features [n, c], label [n], instance ids [n] (or
        None) -> the same four for the points kept (in their order)."""
        if instance is None:
            if float(torch.rand((), generator=gen)) < self.colour_dropout:
                features = torch.zeros_like(features)
            return xyz, features, label, None
        ids, owner = torch.unique(instance, return_inverse=True)
        k, d = len(ids), xyz.shape[1]
        h = d - 1  # horizontal axes
        fixed = torch.zeros(k, dtype=torch.bool)
        fixed[owner[torch.isin(label, torch.tensor(self.structural, dtype=label.dtype))]] = True
        chosen = (torch.rand(k, generator=gen) < probability) & ~fixed
        dropped = chosen & (torch.rand(k, generator=gen) < self.drop)
        moved = chosen & ~dropped
        matrix = torch.eye(d).repeat(k, 1, 1)
        angle = (2 * torch.rand(k, generator=gen) - 1) * self.rotate * math.pi
        if h >= 2:
            cos, sin = torch.cos(angle), torch.sin(angle)
            matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 1, 0], matrix[:, 1, 1] = cos, -sin, sin, cos
        signs = torch.where(torch.rand(k, h, generator=gen) < 0.5, -1.0, 1.0)
        if self.flip:
            matrix[:, :, :h] = matrix[:, :, :h] * signs[:, None, :]
        lo, hi = self.scale
        matrix = matrix * (lo + (hi - lo) * torch.rand(k, generator=gen))[:, None, None]
        offset = torch.zeros(k, d)
        offset[:, :h] = (2 * torch.rand(k, h, generator=gen) - 1) * self.shift
        if moved.any():
            like = dict(dtype=xyz.dtype)
            base = torch.zeros(k, d, **like).index_add_(0, owner, xyz)
            base = base / torch.bincount(owner, minlength=k)[:, None]
            low = torch.full((k,), math.inf, **like).scatter_reduce(0, owner, xyz[:, -1], "amin")
            base[:, -1] = low
            at, turn = base[owner], matrix.to(**like)[owner]
            turned = torch.einsum("nij,nj->ni", turn, xyz - at) + at + offset.to(**like)[owner]
            xyz = torch.where(moved[owner][:, None], turned, xyz)
        if float(torch.rand((), generator=gen)) < self.colour_dropout:
            features = torch.zeros_like(features)
        keep = ~dropped[owner]
        if not keep.all() and keep.any():
            xyz, features, label, instance = xyz[keep], features[keep], label[keep], instance[keep]
        return xyz, features, label, instance


@dataclass
class Augment3D:
    """Scene augmentation: rotation about z, scaling, jitter (sigma, clipped at 3 sigma),
    x/y flips with probability 1/2 each, and dropout of up to ``dropout`` of the points."""

    rotate: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    jitter: float = 0.005
    flip: bool = True
    dropout: float = 0.2

    def __call__(self, xyz, rgb, label, gen: torch.Generator):
        n = xyz.shape[0]
        if self.dropout:
            rate = float(torch.rand((), generator=gen)) * self.dropout
            keep = torch.rand(n, generator=gen) >= rate
            if keep.sum() >= 1:
                xyz, rgb, label = xyz[keep], rgb[keep], label[keep]
        transform = torch.eye(3)
        if self.rotate:
            angle = float(torch.rand((), generator=gen)) * 2 * math.pi
            c, s = math.cos(angle), math.sin(angle)
            transform[:2, :2] = torch.tensor([[c, -s], [s, c]])
        lo, hi = self.scale
        transform = transform * (lo + (hi - lo) * float(torch.rand((), generator=gen)))
        if self.flip:
            signs = torch.where(torch.rand(2, generator=gen) < 0.5, -1.0, 1.0)
            transform[:, :2] = transform[:, :2] * signs
        xyz = xyz @ transform.T
        if self.jitter:
            noise = torch.randn(xyz.shape, generator=gen) * self.jitter
            xyz = xyz + noise.clamp(-3 * self.jitter, 3 * self.jitter)
        return xyz, rgb, label


def mix_scenes(parts: list[tuple], probability: float, gen: torch.Generator) -> list[tuple]:
    """Scene mixing (Mix3D, as Volt trains): consecutive pairs of (xyz, features, labels)
    scenes become one scene with probability ``probability`` each: both are moved to
    stand on one spot (horizontal centroid at 0, floor at 0 on the last axis, up) and
    their points, features and labels concatenated, every point keeping its label. A
    last scene without a partner stays alone."""
    out = []
    for first in range(0, len(parts) - 1, 2):
        a, b = parts[first], parts[first + 1]
        if float(torch.rand((), generator=gen)) < probability:
            pairs = zip(_grounded(a), _grounded(b), strict=True)
            out.append(tuple(torch.cat(pair) for pair in pairs))
        else:
            out += [a, b]
    if len(parts) % 2:
        out.append(parts[-1])
    return out


def _grounded(part: tuple) -> tuple:
    xyz, features, labels = part
    spot = torch.cat((xyz[:, :-1].mean(0), xyz[:, -1:].amin(0)))
    return xyz - spot, features, labels
