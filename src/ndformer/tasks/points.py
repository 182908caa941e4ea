"""Point-cloud segmentation data: scenes of labelled points, batches, 3-D augmentation.

``PointTaskData`` holds every split as concatenated arrays with per-scene offsets;
``batch`` gathers scenes into one padding-free ``PointBatch`` (a scene index per
point) and, given a generator, augments each scene (``point_augment``): its object
instances moved or dropped if asked (scenes with instance ids), then a random rotation
about the up axis (z), isotropic scaling, jitter, flips of x and y, and point dropout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..point_batch import PointBatch
from .base import SPLITS, split_indices
from .point_augment import Augment3D, InstanceAugment, mix_scenes

#: Labels below 0 mark unlabelled points: no loss, not scored.
IGNORE = -1


@dataclass
class PointTaskData:
    """Labelled point-cloud scenes split into train / val / test (per-point segmentation).

    ``xyz[split]`` float32 [P, 3] (metres, z up), ``rgb[split]`` uint8 [P, 3] or None,
    ``label[split]`` int64 [P] (``IGNORE`` = unlabelled), ``offsets[split]`` int64
    [scenes + 1]: scene i is points ``offsets[i]:offsets[i+1]``. ``voxel_size`` and
    ``patch`` are the suggested tokenization (metres, voxels per token axis).
    ``instance[split]`` int32 [P]: the object each point belongs to (ids unique within
    a scene), or ``instance`` None (user data): what ``instance_augmentation`` moves.
    """

    name: str
    num_classes: int
    xyz: dict[str, torch.Tensor]
    rgb: dict[str, torch.Tensor | None]
    label: dict[str, torch.Tensor]
    offsets: dict[str, torch.Tensor]
    class_names: list[str] | None = None
    voxel_size: float = 0.1
    patch: int = 4
    augmentation: Augment3D = field(default_factory=Augment3D)
    kind: str = "segmentation"
    ndim: int = 3
    teacher_model: str = "voxconv-tiny"
    metric: str = "miou"
    instance: dict[str, torch.Tensor] | None = None
    instance_augmentation: InstanceAugment = field(default_factory=InstanceAugment)

    def __post_init__(self) -> None:
        for split in SPLITS:
            if split not in self.xyz:
                raise ValueError(f"point data {self.name!r} has no {split!r} split")
            xyz, label, offsets = self.xyz[split], self.label[split], self.offsets[split]
            if xyz.dim() != 2 or xyz.shape[1] != 3:
                raise ValueError(f"{self.name}: {split} xyz must be [P, 3], got {tuple(xyz.shape)}")
            if label.shape != (xyz.shape[0],):
                raise ValueError(
                    f"{self.name}: {split} labels have shape {tuple(label.shape)}, expected"
                    f" [{xyz.shape[0]}] (one per point)"
                )
            if offsets[0] != 0 or offsets[-1] != xyz.shape[0] or (offsets.diff() < 1).any():
                raise ValueError(f"{self.name}: {split} scene offsets do not cover the points")
            if label.numel() and int(label.max()) >= self.num_classes:
                raise ValueError(
                    f"{self.name}: {split} labels reach {int(label.max())}, outside [0,"
                    f" {self.num_classes - 1}] for {self.num_classes} classes"
                )
        for split, ids in (self.instance or {}).items():
            if ids.shape != self.label[split].shape:
                raise ValueError(f"{self.name}: {split} instance ids have shape"
                                 f" {tuple(ids.shape)}, expected one per point")  # fmt: skip
        if (self.rgb["train"] is None) != any(self.rgb[s] is None for s in SPLITS):
            raise ValueError(f"{self.name}: either every split has colours or none has")

    @property
    def in_chans(self) -> int:
        """Feature channels per point besides its coordinates: 3 with colours, else 0."""
        return 0 if self.rgb["train"] is None else 3

    @property
    def spatial(self) -> tuple[int, ...]:
        return ()

    def num_samples(self, split: str) -> int:
        return len(self.offsets[split]) - 1

    def scene(self, split: str, i: int):
        """(xyz, rgb or None, label) of scene ``i`` of ``split``."""
        lo, hi = int(self.offsets[split][i]), int(self.offsets[split][i + 1])
        rgb = self.rgb[split]
        return self.xyz[split][lo:hi], None if rgb is None else rgb[lo:hi], self.label[split][lo:hi]

    def batch(
        self,
        split: str,
        index: Sequence[int] | torch.Tensor,
        gen: torch.Generator | None = None,
        mix: float = 0.0,
        instance_aug: float = 0.0,
    ) -> tuple[PointBatch, torch.Tensor]:
        """Scenes ``index`` of ``split`` as one ``PointBatch`` and their labels [N];
        augmented when a generator is given: ``instance_augmentation`` with probability
        ``instance_aug`` per instance (if > 0; without ``instance`` ids only its colour
        dropout), ``augmentation``, then ``mix_scenes`` with probability ``mix``."""
        parts = []
        for i in torch.as_tensor(index).tolist():
            xyz, rgb, label = self.scene(split, i)
            rgb = torch.zeros(len(xyz), 0) if rgb is None else rgb.float() / 255
            if gen is not None and instance_aug:
                lo, hi = int(self.offsets[split][i]), int(self.offsets[split][i + 1])
                ids = None if self.instance is None else self.instance[split][lo:hi]
                xyz, rgb, label, _ = self.instance_augmentation(
                    xyz.float(), rgb, label, ids, instance_aug, gen
                )
            if gen is not None:
                xyz, rgb, label = self.augmentation(xyz.float(), rgb, label, gen)
            parts.append((xyz, rgb, label))
        if gen is not None and mix:
            parts = mix_scenes(parts, mix, gen)
        return PointBatch.from_scenes([(x, r) for x, r, _ in parts]), torch.cat(
            [lab for _, _, lab in parts]
        )

    def summary(self) -> str:
        sizes = ", ".join(f"{s} {self.num_samples(s)}" for s in SPLITS)
        points = self.xyz["train"].shape[0] / max(1, self.num_samples("train"))
        return (
            f"{self.name}: point segmentation, {self.num_classes} classes, about"
            f" {points:.0f} points per scene, {self.in_chans} feature channel(s); scenes: {sizes}"
        )


def from_scenes(
    name: str,
    scenes: dict[str, list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]],
    num_classes: int,
    **extra,
) -> PointTaskData:
    """``PointTaskData`` from per-split lists of (xyz [n, 3], rgb [n, 3] or None, label [n])
    or of (xyz, rgb, label, instance ids [n]) (then ``instance`` holds them)."""
    arrays = {}
    for split, items in scenes.items():
        if not items:
            raise ValueError(f"{name}: the {split} split has no scenes")
        arrays[split] = concat_scenes(items)
    return PointTaskData(
        name=name,
        num_classes=num_classes,
        xyz={s: torch.from_numpy(a["xyz"]) for s, a in arrays.items()},
        rgb={
            s: None if a.get("rgb") is None else torch.from_numpy(a["rgb"])
            for s, a in arrays.items()
        },
        label={s: torch.from_numpy(a["label"]).long() for s, a in arrays.items()},
        offsets={s: torch.from_numpy(a["offsets"]) for s, a in arrays.items()},
        instance=None
        if any("instance" not in a for a in arrays.values())
        else {s: torch.from_numpy(a["instance"]) for s, a in arrays.items()},
        **extra,
    )


def concat_scenes(items) -> dict[str, np.ndarray]:
    """Scenes (xyz, rgb or None, label[, instance]) -> concatenated ``xyz``, ``rgb``,
    ``label``, ``offsets`` (and int32 ``instance`` if every scene has instance ids)."""
    sizes = [len(item[0]) for item in items]
    out = dict(
        xyz=np.concatenate([item[0] for item in items]).astype(np.float32),
        label=np.concatenate([item[2] for item in items]).astype(np.int64),
        offsets=np.concatenate(([0], np.cumsum(sizes))).astype(np.int64),
    )
    if all(item[1] is not None for item in items):
        out["rgb"] = np.concatenate([item[1] for item in items]).astype(np.uint8)
    if all(len(item) > 3 for item in items):
        out["instance"] = np.concatenate([item[3] for item in items]).astype(np.int32)
    return out


#: Per-point label properties recognised in .ply files, in order of preference.
PLY_LABELS = ("label", "class", "scalar_label", "semantic")
POINT_SUFFIXES = (".ply", ".npz")


def read_points(path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One scene from a ``.ply`` (vertex x, y, z; optional red, green, blue; optional
    label/class) or an ``.npz`` (``xyz`` [n, 3]; optional ``rgb`` [n, 3] 0-255 and
    ``label`` [n]): (xyz float32, rgb uint8 or None, label int64 or None)."""
    from .files import read_npz

    path = Path(path)
    if not path.exists():
        raise DataError(f"{str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        data = read_npz(path, "point .npz")
        if "xyz" not in data:
            raise DataError(f"{path}: a point .npz needs an 'xyz' array, found {sorted(data)}")
        xyz, rgb, label = data["xyz"], data.get("rgb"), data.get("label")
    elif suffix == ".ply":
        xyz, rgb, label = _read_ply(path)
    else:
        raise DataError(f"{str(path)!r}: expected a .ply or .npz point cloud")
    if xyz.dtype.kind not in "biuf":
        raise DataError(f"{path}: xyz must be numbers, got dtype {xyz.dtype}")
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise DataError(f"{path}: xyz must be [n >= 1, 3], got {xyz.shape}")
    if not np.isfinite(xyz).all():
        bad = int((~np.isfinite(xyz)).any(axis=1).sum())
        raise DataError(f"{path}: {bad} point(s) have NaN or infinite coordinates")
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape != xyz.shape or rgb.dtype.kind not in "biuf":
            raise DataError(f"{path}: rgb {rgb.shape} ({rgb.dtype}) must be numbers like xyz"
                            f" {xyz.shape}")  # fmt: skip
        if not np.isfinite(rgb).all():
            raise DataError(f"{path}: rgb holds NaN or infinite values")
        if rgb.dtype.kind == "f" and rgb.max(initial=0) <= 1.0:
            rgb = rgb * 255  # colours given in [0, 1]
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    if label is not None:
        label = np.asarray(label)
        if label.dtype.kind not in "biu" and not (
            label.dtype.kind == "f"
            and np.isfinite(label).all()
            and (label == np.round(label)).all()
        ):
            raise DataError(f"{path}: labels must be integers, got {label.dtype} values")
        label = label.astype(np.int64).reshape(-1)
        if label.shape != (len(xyz),):
            raise DataError(f"{path}: label {label.shape} must have one entry per point")
        if label.size and int(label.min()) < IGNORE:
            raise DataError(
                f"{path}: labels hold {int(label.min())}; labels are >= 0, or {IGNORE} for"
                " unlabelled points"
            )
    return xyz, rgb, label


def _read_ply(path: Path):
    """(xyz, rgb or None, label or None) of a .ply's vertex element, as raw arrays."""
    try:
        from plyfile import PlyData
    except ImportError as error:
        raise ValueError(".ply files need plyfile: pip install 'ndformer[all]'") from error
    try:
        ply = PlyData.read(str(path))
    except Exception as error:  # plyfile's parse errors, struct/EOF errors of a truncated file
        problem = " ".join(str(error).split()) or type(error).__name__
        raise DataError(f"{path}: not a readable .ply ({problem})") from None
    elements = [e.name for e in ply.elements]
    if "vertex" not in elements:
        raise DataError(f"{path}: no 'vertex' element (found {elements})")
    vertex = ply["vertex"]
    names = vertex.data.dtype.names or ()
    missing = [a for a in "xyz" if a not in names]
    if missing:
        raise DataError(f"{path}: the vertex element has no {missing} (found {names})")
    xyz = np.stack([vertex[a] for a in "xyz"], axis=1)
    colours = ("red", "green", "blue")
    rgb = np.stack([vertex[c] for c in colours], axis=1) if set(colours) <= set(names) else None
    found = [p for p in PLY_LABELS if p in names]
    return xyz, rgb, vertex[found[0]] if found else None


def write_ply(path, xyz: np.ndarray, label: np.ndarray, rgb: np.ndarray | None = None) -> None:
    """A binary .ply with x, y, z, red, green, blue and ``label`` per vertex (written
    atomically); ``rgb`` defaults to a colour per label, for viewers."""
    from plyfile import PlyData, PlyElement

    from .._io import atomic_write

    if rgb is None:
        rgb = label_colours(label)
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(len(xyz), dtype=[*fields, ("label", "i4")])
    for axis, name in enumerate("xyz"):
        vertex[name] = xyz[:, axis]
    for axis, name in enumerate(("red", "green", "blue")):
        vertex[name] = rgb[:, axis]
    vertex["label"] = label
    data = PlyData([PlyElement.describe(vertex, "vertex")])
    atomic_write(path, data.write)


#: Distinct colours for labels 0, 1, ... (light grey floor, then strong hues).
LABEL_COLOURS = np.array(
    [
        [200, 200, 200], [120, 120, 160], [230, 120, 20], [40, 150, 40], [200, 40, 40],
        [150, 90, 200], [140, 90, 60], [240, 200, 0], [30, 190, 210], [230, 110, 190],
        [90, 90, 90], [170, 200, 90], [20, 60, 160], [250, 160, 120], [0, 120, 120],
        [180, 0, 90],
    ],
    dtype=np.uint8,
)  # fmt: skip


def label_colours(label: np.ndarray) -> np.ndarray:
    """A distinct colour (uint8 RGB [n, 3]) per label (cycling after 16 labels)."""
    return LABEL_COLOURS[np.asarray(label) % len(LABEL_COLOURS)]


def load_point_folder(folder, seed: int = 0) -> PointTaskData:
    """Labelled scenes from a folder of ``.ply`` / ``.npz`` files, split 70/10/20 by ``seed``
    (or the folder's ``train/``, ``val/``, ``test/`` sub-folders if it has them)."""
    folder = Path(folder)
    splits = {s: folder / s for s in SPLITS}
    if all(p.is_dir() for p in splits.values()):
        files = {s: _point_files(p) for s, p in splits.items()}
    else:
        every = _point_files(folder)
        if len(every) < 3:
            raise DataError(f"{folder}: {len(every)} scene file(s); need at least 3 to split")
        parts = split_indices(len(every), seed)
        files = {s: [every[i] for i in sorted(idx)] for s, idx in parts.items()}
    scenes = {}
    for split, paths in files.items():
        scenes[split] = []
        for path in paths:
            xyz, rgb, label = read_points(path)
            if label is None:
                raise DataError(f"{path}: training data needs a per-point label")
            scenes[split].append((xyz, rgb, label))
    has_rgb = {rgb is not None for items in scenes.values() for _, rgb, _ in items}
    if len(has_rgb) > 1:
        raise DataError(f"{folder}: some scenes have colours and some do not")
    classes = 1 + max(int(label.max(initial=0)) for *_, label in scenes["train"])
    if classes < 1 or all((label < 0).all() for *_, label in scenes["train"]):
        raise DataError(f"{folder}: the train scenes have no labelled points")
    for split in ("val", "test"):
        top = max(int(label.max(initial=0)) for *_, label in scenes[split])
        if top >= classes:
            raise DataError(f"{folder}: {split} scenes hold label {top} but the train scenes only"
                            f" 0..{classes - 1} (every class needs train examples)")  # fmt: skip
    return from_scenes(folder.name, scenes, num_classes=max(classes, 2), voxel_size=0.05)


def _point_files(folder) -> list:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in POINT_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no .ply or .npz scenes")
    return files


def is_point_folder(folder) -> bool:
    """Whether ``folder`` (or its train/ sub-folder) holds .ply / .npz scenes."""
    folder = Path(folder)
    for candidate in (folder, folder / "train"):
        if candidate.is_dir() and any(
            p.suffix.lower() in POINT_SUFFIXES for p in candidate.iterdir()
        ):
            return True
    return False
