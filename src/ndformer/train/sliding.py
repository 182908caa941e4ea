"""Sliding-window inference over volumes larger than the training crop (MONAI-style), and
``predict_volume``: a NIfTI volume in, a NIfTI label map with the input's affine out."""

from __future__ import annotations

import gzip
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import per_axis
from ..errors import DataError, UsageError

BLENDS = ("constant", "gaussian")


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``roi`` covering an axis of ``size`` (>= roi): every
    ``max(1, int(roi * (1 - overlap)))`` voxels, plus a last window flush with the end."""
    step = max(1, int(roi * (1.0 - overlap)))
    starts = list(range(0, size - roi + 1, step))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return starts


def importance(roi: tuple[int, ...], blend: str, dtype=torch.float32) -> torch.Tensor:
    """Weights [*roi] of a window's voxels when windows are averaged: ones (``constant``)
    or a Gaussian centred in the window with sigma = roi / 8 per axis (``gaussian``, lower
    weight near the window borders, where context is missing), scaled to a maximum of 1."""
    if blend == "constant":
        return torch.ones(roi, dtype=dtype)
    weight = torch.ones((), dtype=torch.float64)
    for axis, n in enumerate(roi):
        centre, sigma = (n - 1) / 2, max(n / 8, 1e-3)
        g = torch.exp(-0.5 * ((torch.arange(n, dtype=torch.float64) - centre) / sigma) ** 2)
        weight = weight[..., None] * g.view(*[1] * axis, n)
    return (weight / weight.max()).clamp_min(1e-3).to(dtype)


@torch.inference_mode()
def sliding_window(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    roi: int | Sequence[int],
    overlap: float = 0.25,
    blend: str = "constant",
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Dense outputs of ``forward`` over all of ``x`` [B, C, *spatial] (any number of axes)
    from windows of ``roi`` voxels per axis overlapping by the fraction ``overlap``.

    ``forward`` maps a batch of windows [b, C, *roi] to [b, K, *roi]. Each voxel's output
    is the ``importance``-weighted mean over the windows that hold it. An axis shorter
    than its roi is zero-padded at both ends for the windows and cropped back after.
    Returns [B, K, *spatial].
    """
    if blend not in BLENDS:
        raise UsageError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    if not 0.0 <= overlap < 1.0:
        raise UsageError(f"overlap must be in [0, 1), got {overlap}")
    spatial = tuple(x.shape[2:])
    roi = per_axis("roi", tuple(roi) if isinstance(roi, Sequence) else roi, len(spatial))
    if any(r < 1 for r in roi):
        raise UsageError(f"roi must be >= 1 on every axis, got {roi}")
    short = [max(0, r - n) for r, n in zip(roi, spatial, strict=True)]
    pad = [p for s in reversed(short) for p in (s // 2, s - s // 2)]
    padded = F.pad(x, pad)
    shape = tuple(padded.shape[2:])
    starts = list(
        itertools.product(*(window_starts(n, r, overlap) for n, r in zip(shape, roi, strict=True)))
    )
    weight = importance(roi, blend, dtype=torch.float32).to(x.device)
    total = counts = None
    for sample in range(x.shape[0]):
        for first in range(0, len(starts), batch_size):
            chunk = starts[first : first + batch_size]
            slices = [
                tuple(slice(s, s + r) for s, r in zip(start, roi, strict=True)) for start in chunk
            ]
            windows = torch.stack([padded[(sample, slice(None), *where)] for where in slices])
            out = forward(windows).float()
            if total is None:
                total = out.new_zeros((x.shape[0], out.shape[1], *shape))
                counts = out.new_zeros(shape)
            for where, window_out in zip(slices, out, strict=True):
                total[(sample, slice(None), *where)] += window_out * weight
                if sample == 0:
                    counts[where] += weight
            if progress is not None:
                progress(sample * len(starts) + first + len(chunk), x.shape[0] * len(starts))
    result = total / counts
    crop = tuple(slice(s // 2, s // 2 + n) for s, n in zip(short, spatial, strict=True))
    return result[(slice(None), slice(None), *crop)]


def read_volume(path: Path) -> Any:
    """The NIfTI image at ``path`` (nibabel), a ``DataError`` naming the file if unreadable."""
    try:
        import nibabel
    except ImportError as error:
        raise UsageError("NIfTI volumes need nibabel: pip install 'ndformer[all]'") from error
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    try:
        image = nibabel.load(str(path))
        image.get_fdata(dtype=np.float32)
    except Exception as error:  # nibabel, gzip and zlib errors of a broken file
        raise DataError(f"{path}: not a readable NIfTI volume ({error})") from None
    return image


def predict_volume(
    run: str | Path,
    volume: str | Path,
    out: str | Path,
    roi: int | Sequence[int] | None = None,
    overlap: float = 0.25,
    blend: str = "constant",
    progress: Callable[[int, int], None] | None = None,
    plot: str | Path | None = None,
) -> dict[str, Any]:
    """Segment the NIfTI ``volume`` ([*spatial] or [*spatial, C] voxels) with the grid
    model of ``run`` by ``sliding_window`` (``roi`` default: the training volume size) and
    write the label map to ``out`` (.nii / .nii.gz, atomically) with the input's affine;
    with ``plot``, a PNG of the middle slices with the labels over them (3-D models).
    Returns the shape, the roi, the number of windows and the voxel counts per class."""
    from .._io import atomic_write
    from .checkpoint import load, read_run

    volume, out = Path(volume), Path(out)
    if not out.name.lower().endswith((".nii", ".nii.gz")):
        raise UsageError(f"--out must end in .nii or .nii.gz for a volume, got {str(out)!r}")
    image = read_volume(volume)
    info = read_run(run)
    data = info["data"]
    if data.get("points") or data.get("kind") != "segmentation":
        raise UsageError(
            f"{run} holds a {'point' if data.get('points') else data.get('kind')} model;"
            " predict on a volume needs a run trained for segmentation of grids"
        )
    array = np.asarray(image.get_fdata(dtype=np.float32))
    model = load(run).eval()
    ndim, chans = model.ndim, model.in_chans
    if array.ndim == ndim:
        array = array[None]
    elif array.ndim == ndim + 1:
        array = np.moveaxis(array, -1, 0)
    else:
        raise DataError(f"{volume}: {array.ndim}-D voxels {array.shape}, the model takes {ndim}-D")
    if array.shape[0] != chans:
        raise DataError(
            f"{volume}: {array.shape[0]} channel(s) (voxels {image.shape}), the model takes {chans}"
        )
    roi = per_axis("roi", tuple(data["spatial"]) if roi is None else roi, ndim)
    x = torch.from_numpy(array)[None]
    mean = torch.tensor(data["mean"]).view(1, -1, *[1] * ndim)
    std = torch.tensor(data["std"]).view(1, -1, *[1] * ndim)
    logits = sliding_window(model, (x - mean) / std, roi, overlap, blend, progress=progress)
    labels = logits.argmax(1)[0].numpy().astype(np.uint8 if model.num_classes <= 256 else np.int32)
    import nibabel

    header = image.header.copy()
    header.set_data_dtype(labels.dtype)
    header.set_slope_inter(1.0, 0.0)  # labels are stored as they are, never rescaled
    result = nibabel.Nifti1Image(labels, image.affine, header)
    payload = result.to_bytes()
    if out.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6)
    atomic_write(out, lambda handle: handle.write(payload))
    names = data.get("class_names") or [str(c) for c in range(model.num_classes)]
    if plot is not None and ndim == 3:
        from ..viz import plot_volume_labels

        figure = plot_volume_labels(array[0], {"prediction": labels}, names)
        figure.suptitle(f"{volume.name}: {model.config.name or 'model'}", fontsize=10)
        figure.savefig(plot, dpi=100)
    counts = np.bincount(labels.ravel(), minlength=model.num_classes)
    windows = math.prod(
        len(window_starts(max(n, r), r, overlap)) for n, r in zip(labels.shape, roi, strict=True)
    )
    return dict(
        shape=tuple(labels.shape),
        roi=roi,
        windows=windows,
        counts={names[c]: int(n) for c, n in enumerate(counts) if n},
    )
