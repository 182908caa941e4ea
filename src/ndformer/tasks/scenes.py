"""Generated indoor scenes as labelled point clouds (the ``scenes-points`` task).

A scene is a rectangular room (floor and four walls, no ceiling, as a scan from
above sees it) furnished with objects built from boxes and cylinders: tables,
chairs, sofas, beds, cabinets and lamps. Points are sampled uniformly over the
visible surfaces (no hidden bottoms), moved by Gaussian noise, coloured per object
from one shared palette (so colour tells objects apart but not classes), and the
whole scene is rotated by a random angle about the up axis (z). Units are metres.
Everything is made locally from a seed.
"""

from __future__ import annotations

import math

import numpy as np

SCENE_CLASSES = ("floor", "wall", "table", "chair", "sofa", "bed", "cabinet", "lamp")
FLOOR, WALL, TABLE, CHAIR, SOFA, BED, CABINET, LAMP = range(len(SCENE_CLASSES))
#: Colours shared by every class (RGB 0-255): colour alone never gives the class away.
PALETTE = np.array(
    [
        [200, 190, 170], [150, 110, 80], [90, 90, 95], [220, 220, 215], [120, 140, 160],
        [170, 60, 50], [60, 110, 70], [210, 180, 90], [100, 70, 110], [40, 40, 40],
    ],
    dtype=np.float64,
)  # fmt: skip
#: Standard deviation of the surface noise, metres.
NOISE = 0.008

# A surface: (kind, params, label, colour) with kind "rect" (origin, edge u, edge v)
# or "tube" (centre of the bottom circle, radius, height).
Surface = tuple[str, tuple, int, np.ndarray]


def _box(lo, hi, label: int, colour, bottom: bool = False) -> list[Surface]:
    """The faces of an axis-aligned box [lo, hi] (the bottom only if ``bottom``)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    size = hi - lo
    ex, ey, ez = np.diag(size)
    faces = [
        (hi * [0, 0, 1] + lo * [1, 1, 0], ex, ey),  # top
        (lo, ex, ez), (lo + ey, ex, ez),  # front, back
        (lo, ey, ez), (lo + ex, ey, ez),  # left, right
    ]  # fmt: skip
    if bottom:
        faces.append((lo, ex, ey))
    return [("rect", face, label, colour) for face in faces]


def _legs(x0, y0, x1, y1, height, label, colour, width=0.05) -> list[Surface]:
    out: list[Surface] = []
    for x, y in ((x0, y0), (x1 - width, y0), (x0, y1 - width), (x1 - width, y1 - width)):
        out += _box((x, y, 0), (x + width, y + width, height), label, colour)
    return out


def _furniture(kind: int, w: float, d: float, rng: np.random.Generator, colour) -> list[Surface]:
    """One object in its own frame: footprint [0, w] x [0, d], standing on z = 0, its
    back (if it has one) along y = d."""
    if kind == TABLE:
        h = rng.uniform(0.7, 0.78)
        return _box((0, 0, h - 0.04), (w, d, h), TABLE, colour, bottom=True) + _legs(
            0.03, 0.03, w - 0.03, d - 0.03, h - 0.04, TABLE, colour
        )
    if kind == CHAIR:
        seat = rng.uniform(0.42, 0.48)
        parts = _box((0, 0, seat - 0.05), (w, d, seat), CHAIR, colour, bottom=True)
        parts += _legs(0.0, 0.0, w, d, seat - 0.05, CHAIR, colour, width=0.04)
        return parts + _box(
            (0, d - 0.05, seat), (w, d, seat + rng.uniform(0.4, 0.5)), CHAIR, colour
        )
    if kind == SOFA:
        parts = _box((0, 0, 0), (w, d, 0.42), SOFA, colour)
        parts += _box((0, d - 0.2, 0.42), (w, d, rng.uniform(0.8, 0.9)), SOFA, colour)
        for x in (0.0, w - 0.18):
            parts += _box((x, 0, 0.42), (x + 0.18, d - 0.2, 0.6), SOFA, colour)
        return parts
    if kind == BED:
        parts = _box((0, 0, 0), (w, d, rng.uniform(0.45, 0.55)), BED, colour)
        return parts + _box((0, d - 0.08, 0), (w, d, rng.uniform(0.9, 1.1)), BED, colour)
    if kind == CABINET:
        return _box((0, 0, 0), (w, d, rng.uniform(0.8, 2.0)), CABINET, colour)
    # LAMP: a base disc, a pole and a shade.
    height, cx, cy = rng.uniform(1.3, 1.7), w / 2, d / 2
    return [
        ("tube", ((cx, cy, 0.0), 0.15, 0.03), LAMP, colour),
        ("rect", ((cx - 0.15, cy - 0.15, 0.03), (0.3, 0, 0), (0, 0.3, 0)), LAMP, colour),
        ("tube", ((cx, cy, 0.03), 0.02, height - 0.3), LAMP, colour),
        ("tube", ((cx, cy, height - 0.3), 0.2, 0.3), LAMP, colour),
    ]


#: Footprint ranges (width, depth) in metres and how many of each class a room gets.
_SIZES = {
    TABLE: ((0.8, 1.6), (0.6, 1.0)),
    CHAIR: ((0.42, 0.5), (0.42, 0.5)),
    SOFA: ((1.6, 2.2), (0.8, 0.95)),
    BED: ((1.4, 1.8), (1.9, 2.1)),
    CABINET: ((0.5, 1.2), (0.4, 0.6)),
    LAMP: ((0.4, 0.4), (0.4, 0.4)),
}
_COUNTS = {TABLE: (1, 2), CHAIR: (2, 4), SOFA: (0, 1), BED: (0, 1), CABINET: (1, 2), LAMP: (1, 2)}


def _place(rng, room_w, room_d, w, d, taken, against_wall: bool):
    """A free spot (x, y, quarter turns) for a w x d footprint, or None."""
    for _ in range(40):
        turns = int(rng.integers(4))
        fw, fd = (w, d) if turns % 2 == 0 else (d, w)
        if fw > room_w - 0.2 or fd > room_d - 0.2:
            continue
        if against_wall:  # back to a random wall
            side = int(rng.integers(4))
            x = rng.uniform(0.1, room_w - fw - 0.1)
            y = rng.uniform(0.1, room_d - fd - 0.1)
            x, y = [(x, 0.02), (x, room_d - fd - 0.02), (0.02, y), (room_w - fw - 0.02, y)][side]
        else:
            x, y = rng.uniform(0.1, room_w - fw - 0.1), rng.uniform(0.1, room_d - fd - 0.1)
        box = (x - 0.1, y - 0.1, x + fw + 0.1, y + fd + 0.1)
        if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken):
            taken.append(box)
            return x, y, turns, fw, fd
    return None


def _transform(surface: Surface, x, y, turns, w, d) -> Surface:
    """Rotate an object's surface by ``turns`` quarter turns about its footprint and move it."""
    kind, params, label, colour = surface
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][turns]
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=float)
    # Rotating [0, w] x [0, d] gives a box whose lower corner must land on (x, y).
    corners = rot @ np.array([[0, w, 0, w], [0, 0, d, d], [0, 0, 0, 0]], dtype=float)
    shift = np.array([x, y, 0]) - corners.min(axis=1)
    if kind == "rect":
        origin, eu, ev = (np.asarray(p, float) for p in params)
        return kind, (rot @ origin + shift, rot @ eu, rot @ ev), label, colour
    centre, radius, height = params
    return kind, (rot @ np.asarray(centre, float) + shift, radius, height), label, colour


def _area(surface: Surface) -> float:
    kind, params, _, _ = surface
    if kind == "rect":
        return float(np.linalg.norm(np.cross(params[1], params[2])))
    return 2 * math.pi * params[1] * params[2]


def _sample(surface: Surface, count: int, rng) -> np.ndarray:
    kind, params, _, _ = surface
    if kind == "rect":
        origin, eu, ev = params
        u, v = rng.random((2, count, 1))
        return origin + u * eu + v * ev
    centre, radius, height = params
    angle, z = rng.uniform(0, 2 * math.pi, count), rng.uniform(0, height, count)
    return np.asarray(centre) + np.stack(
        (radius * np.cos(angle), radius * np.sin(angle), z), axis=1
    )


def room_scene(points: int, seed: int, instances: bool = False) -> tuple[np.ndarray, ...]:
    """One generated room with ``points`` points: xyz float32 [n, 3] (metres, z up),
    rgb uint8 [n, 3] and labels int64 [n] indexing ``SCENE_CLASSES``; with
    ``instances``, also instance ids int32 [n]: 0 the floor, 1-4 the walls, 5, 6, ...
    one per piece of furniture (the same xyz, rgb and labels either way)."""
    if points < 100:
        raise ValueError(f"a scene needs at least 100 points, got {points}")
    rng = np.random.default_rng(seed)
    room_w, room_d, room_h = rng.uniform(4.0, 7.0), rng.uniform(4.0, 7.0), rng.uniform(2.5, 3.0)

    def colour():
        return PALETTE[rng.integers(len(PALETTE))]

    wall_colour = colour()
    surfaces: list[Surface] = [
        ("rect", ((0, 0, 0), (room_w, 0, 0), (0, room_d, 0)), FLOOR, colour()),
        ("rect", ((0, 0, 0), (room_w, 0, 0), (0, 0, room_h)), WALL, wall_colour),
        ("rect", ((0, room_d, 0), (room_w, 0, 0), (0, 0, room_h)), WALL, wall_colour),
        ("rect", ((0, 0, 0), (0, room_d, 0), (0, 0, room_h)), WALL, wall_colour),
        ("rect", ((room_w, 0, 0), (0, room_d, 0), (0, 0, room_h)), WALL, wall_colour),
    ]
    owners = list(range(len(surfaces)))  # the instance of each surface
    taken: list[tuple] = []
    for kind, (low, high) in _COUNTS.items():
        for _ in range(int(rng.integers(low, high + 1))):
            (w0, w1), (d0, d1) = _SIZES[kind]
            w, d = rng.uniform(w0, w1), rng.uniform(d0, d1)
            spot = _place(rng, room_w, room_d, w, d, taken, kind in (CABINET, SOFA, BED))
            if spot is None:
                continue
            x, y, turns, _, _ = spot
            shade = colour()
            parts = [_transform(s, x, y, turns, w, d) for s in _furniture(kind, w, d, rng, shade)]
            owners += [owners[-1] + 1] * len(parts)
            surfaces += parts
    areas = np.array([_area(s) for s in surfaces])
    counts = rng.multinomial(points, areas / areas.sum())
    xyz, rgb, labels, ids = [], [], [], []
    for surface, owner, count in zip(surfaces, owners, counts, strict=True):
        if count:
            xyz.append(_sample(surface, count, rng))
            rgb.append(np.broadcast_to(surface[3], (count, 3)))
            labels.append(np.full(count, surface[2]))
            ids.append(np.full(count, owner, dtype=np.int32))
    xyz_all = np.concatenate(xyz) + rng.normal(0, NOISE, (points, 3))
    angle = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(angle), math.sin(angle)
    xyz_all[:, :2] = xyz_all[:, :2] @ np.array([[c, s], [-s, c]])
    rgb_all = np.clip(np.concatenate(rgb) + rng.normal(0, 12, (points, 3)), 0, 255)
    order = rng.permutation(points)  # no order that would give the labels away
    out = (
        xyz_all[order].astype(np.float32),
        rgb_all[order].astype(np.uint8),
        np.concatenate(labels)[order].astype(np.int64),
    )
    return (*out, np.concatenate(ids)[order]) if instances else out
