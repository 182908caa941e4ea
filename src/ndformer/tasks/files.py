"""User data from files: image folders, MedMNIST-style ``.npz``, NIfTI volumes listed in a CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, UsageError
from .base import SPLITS, TaskData, check_user_data, split_indices, suggest_patch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_data(path: str | Path, seed: int = 0):
    """A task from the user's files at ``path``:

    - a folder with one sub-folder of images per class (or ``train/``, ``val/``,
      ``test/`` folders, each with class sub-folders); images are resized to the
      size of the first one;
    - an ``.npz`` in the MedMNIST layout: ``train_images``, ``train_labels``,
      ``val_*``, ``test_*``; images [n, H, W], [n, H, W, C] (C in 1, 3, 4) or
      [n, D, H, W]; labels [n] / [n, 1], or per-pixel labels shaped like the images
      (segmentation);
    - a folder of ``.ply`` / ``.npz`` point clouds with per-point labels (one scene per
      file, or ``train/``, ``val/``, ``test/`` folders of them): point segmentation;
    - a ``.csv`` with columns ``path,label`` of NIfTI volumes (``.nii`` / ``.nii.gz``),
      resized to the first volume's shape, split 70/10/20 by ``seed``.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--data {str(path)!r} does not exist")
    from .points import is_point_folder, load_point_folder

    if path.is_dir():
        if is_point_folder(path):
            return load_point_folder(path, seed)
        return check_user_data(_image_folder(path, seed), str(path))
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return check_user_data(_npz(path), str(path))
    if suffix == ".csv":
        return check_user_data(_nifti_csv(path, seed), str(path))
    if suffix == ".ply":
        raise UsageError(
            f"--data {str(path)!r} is one point cloud; training needs a folder of labelled"
            " scenes (put it in a folder with the others); to label it use ndformer predict"
        )
    raise UsageError(
        f"--data {str(path)!r}: expected a folder (class folders of images, or .ply/.npz"
        f" scenes), an .npz in the MedMNIST layout or a .csv of NIfTI paths, not"
        f" {suffix or 'a file without a suffix'}"
    )


def read_npz(path: Path, kind: str = ".npz archive") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read completely; a ``DataError`` naming the file
    for an empty, truncated, corrupt or pickled archive."""
    import zipfile
    import zlib

    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: a single .npy array, not an {kind}")
            return {name: data[name] for name in data.files}
    except DataError:
        raise
    except EOFError:
        raise DataError(f"{path}: the file is empty, not an {kind}") from None
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError) as error:
        problem = "it holds Python objects" if "pickle" in str(error) else error
        raise DataError(
            f"{path}: not a readable {kind} ({problem}); the file may be truncated or corrupt"
        ) from None


#: Training augmentation of user classification data: random shifts of up to this many
#: voxels per axis (label-preserving for classification; flips are not in general).
USER_SHIFT = 1


def _classification(name: str, images: np.ndarray, labels: np.ndarray, parts, classes, patch):
    return TaskData(
        name=name,
        kind="classification",
        num_classes=len(classes),
        x={s: torch.from_numpy(images[i]) for s, i in parts.items()},
        y={s: torch.from_numpy(labels[i]).long() for s, i in parts.items()},
        patch=patch,
        max_shift=USER_SHIFT,
        class_names=list(classes),
    )


def _image_folder(root: Path, seed: int) -> TaskData:
    split_roots = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_roots and set(split_roots) != set(SPLITS):
        raise DataError(f"{root}: has {sorted(split_roots)} folders; need all of {list(SPLITS)}")
    sources = split_roots or {"all": root}
    classes = sorted(d.name for d in next(iter(sources.values())).iterdir() if d.is_dir())
    if len(classes) < 2:
        raise DataError(f"{root}: need at least 2 class folders, found {classes}")
    files: dict[str, list[tuple[Path, int]]] = {}
    for split, base in sources.items():
        found = sorted(d.name for d in base.iterdir() if d.is_dir())
        if found != classes:
            raise DataError(
                f"{base}: class folders {found} differ from {classes} (every split needs the"
                " same class folders)"
            )
        files[split] = []
        for label, cls in enumerate(classes):
            images = [
                f for f in sorted((base / cls).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES
            ]
            if not images and (split in ("train", "all")):
                raise DataError(f"{base / cls}: an empty class folder (no images)")
            files[split] += [(f, label) for f in images]
        if not files[split]:
            raise DataError(f"{base}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    first = _open_image(files[next(iter(files))][0][0])
    mode = "L" if first.mode in ("1", "L", "I", "I;16", "F") else "RGB"
    size = first.size

    def read(items):
        arrays = [np.asarray(_open_image(f).convert(mode).resize(size)) for f, _ in items]
        x = np.stack(arrays).astype(np.uint8)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return x, np.array([label for _, label in items], dtype=np.int64)

    if split_roots:
        data = {s: read(files[s]) for s in SPLITS}
        images = np.concatenate([data[s][0] for s in SPLITS])
        labels = np.concatenate([data[s][1] for s in SPLITS])
        bounds = np.cumsum([0] + [len(data[s][1]) for s in SPLITS])
        parts = {s: np.arange(bounds[i], bounds[i + 1]) for i, s in enumerate(SPLITS)}
    else:
        images, labels = read(files["all"])
        parts = split_indices(len(labels), seed)
    patch = suggest_patch(images.shape[2:])
    return _classification(root.name, images, labels, parts, classes, patch)


def _open_image(path: Path):
    """The image at ``path``, decoded (a ``DataError`` naming it if it cannot be)."""
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, SyntaxError) as error:  # UnidentifiedImageError is an OSError
        raise DataError(f"{path}: not a readable image ({error})") from None
    return image


def _npz(path: Path) -> TaskData:
    data = read_npz(path, ".npz in the MedMNIST layout")
    if "xyz" in data:
        raise UsageError(
            f"--data {str(path)!r} is one point cloud (it has 'xyz'); training needs a folder of"
            " labelled scenes; to label it use ndformer predict"
        )
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in data]
    if missing:
        raise DataError(f"{path}: missing arrays {missing} (has {sorted(data)})")
    images = {s: data[f"{s}_images"] for s in SPLITS}
    labels = {s: data[f"{s}_labels"] for s in SPLITS}
    for s in SPLITS:
        if images[s].dtype.kind not in "biuf":
            raise DataError(f"{path}: {s}_images must be numbers, got dtype {images[s].dtype}")
    x = {s: _channels_first(images[s], f"{path}: {s}_images") for s in SPLITS}
    spatial = x["train"].shape[2:]
    for s in SPLITS:
        if x[s].shape[1:] != x["train"].shape[1:]:
            raise DataError(
                f"{path}: {s}_images {images[s].shape} do not match train_images"
                f" {images['train'].shape} (channels and spatial size must agree)"
            )
    dense = labels["train"].shape[1:] == spatial
    y = {}
    for s in SPLITS:
        lab = labels[s]
        if not dense and lab.ndim == 2 and lab.shape[1] == 1:
            lab = lab[:, 0]
        if lab.shape[0] != x[s].shape[0]:
            raise DataError(
                f"{path}: {s}_labels has {lab.shape[0]} entries for {x[s].shape[0]} images"
            )
        if not np.issubdtype(lab.dtype, np.integer):
            raise DataError(f"{path}: {s}_labels must be integers, got {lab.dtype}")
        if lab.size and int(lab.min()) < 0:
            raise DataError(f"{path}: {s}_labels hold {int(lab.min())}; labels must be >= 0")
        y[s] = torch.from_numpy(lab.astype(np.int64))
    if not y["train"].numel():
        raise DataError(f"{path}: the train split is empty")
    num_classes = int(y["train"].max()) + 1
    for s in ("val", "test"):
        if y[s].numel() and int(y[s].max()) >= num_classes:
            raise DataError(
                f"{path}: {s}_labels reach {int(y[s].max())} but train_labels only 0.."
                f"{num_classes - 1} (every class needs train examples)"
            )
    return TaskData(
        name=path.stem,
        kind="segmentation" if dense else "classification",
        num_classes=max(num_classes, 2),
        x={s: torch.from_numpy(np.ascontiguousarray(x[s])) for s in SPLITS},
        y=y,
        patch=suggest_patch(spatial),
        max_shift=0 if dense else USER_SHIFT,
    )


def _channels_first(images: np.ndarray, name: str) -> np.ndarray:
    """MedMNIST layouts -> [n, C, *spatial]."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[-1] in (1, 3, 4) and min(images.shape[1:3]) > 4:
        return images.transpose(0, 3, 1, 2)
    if images.ndim == 4:
        return images[:, None]
    raise DataError(
        f"{name} has shape {images.shape}; expected [n, H, W], [n, H, W, C] or [n, D, H, W]"
    )


def _nifti_csv(path: Path, seed: int) -> TaskData:
    try:
        import nibabel
    except ImportError as error:
        raise ValueError("NIfTI data needs nibabel: pip install 'ndformer[all]'") from error
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable CSV ({error})") from None
    if not rows or {"path", "label"} - set(rows[0]):
        raise DataError(f"{path}: needs a header with columns 'path,label' and at least one row")
    names = sorted({row["label"] for row in rows})
    volumes, labels = [], []
    shape = None
    for line, row in enumerate(rows, start=2):
        file = Path(row["path"])
        file = file if file.is_absolute() else path.parent / file
        if not file.exists():
            raise DataError(f"{path}:{line}: volume {str(file)!r} does not exist")
        try:
            array = np.asarray(nibabel.load(str(file)).get_fdata(), np.float32)
        except Exception as error:  # nibabel, gzip and zlib errors of a broken file
            problem = " ".join(str(error).split()) or type(error).__name__
            raise DataError(
                f"{path}:{line}: volume {str(file)!r} is unreadable ({problem}); it may be"
                " truncated or corrupt"
            ) from None
        volume = torch.from_numpy(array)
        if volume.dim() != 3:
            raise DataError(f"{path}:{line}: {file.name} has shape {tuple(volume.shape)}, not 3-D")
        if not bool(torch.isfinite(volume).all()):
            raise DataError(f"{path}:{line}: {file.name} holds NaN or infinite values")
        shape = shape or tuple(volume.shape)
        if tuple(volume.shape) != shape:
            volume = F.interpolate(volume[None, None], size=shape, mode="trilinear")[0, 0]
        volumes.append(volume.numpy())
        labels.append(names.index(row["label"]))
    images = np.stack(volumes)[:, None]
    parts = split_indices(len(labels), seed)
    return _classification(
        path.stem, images, np.array(labels), parts, names, suggest_patch(images.shape[2:])
    )
