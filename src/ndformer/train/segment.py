"""Segment a user's point cloud with a trained point model (``ndformer predict``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models import POINT_ARCHS, NdModel
from ..point_batch import PointBatch
from ..tasks.points import IGNORE, read_points, write_ply
from .checkpoint import load, read_run
from .metrics import confusion, miou_score


@torch.inference_mode()
def segment_points(model: NdModel, xyz: np.ndarray, rgb: np.ndarray | None) -> np.ndarray:
    """Per-point labels [n] (int64) of one scene: xyz [n, 3] metres, rgb [n, 3] 0-255."""
    if model.config.arch not in POINT_ARCHS:
        raise ValueError(
            f"model {model.config.name or model.config.arch} takes grids, not point clouds;"
            " use ndformer evaluate for grid models"
        )
    if model.in_chans == 3 and rgb is None:
        raise ValueError("the model was trained with colours (rgb) but the scene has none")
    features = None if model.in_chans == 0 else torch.from_numpy(rgb).float() / 255
    if features is not None and features.shape[1] != model.in_chans:
        raise ValueError(
            f"the model expects {model.in_chans} feature channels, the scene has"
            f" {features.shape[1]}"
        )
    batch = PointBatch.from_scenes([(torch.from_numpy(xyz), features)])
    return model.eval()(batch).argmax(1).numpy()


def segment_file(
    run: str | Path, scene: str | Path, out: str | Path, plot: str | Path | None = None
) -> dict[str, Any]:
    """Label every point of ``scene`` (.ply / .npz) with the model of ``run``; write
    ``out`` (.ply with x, y, z, colours per label and ``label``; or .npz with ``xyz``,
    ``label``) and, with ``plot``, a PNG of the labels seen from above (next to the
    file's own labels if it has them). Returns the counts per class and, if the file
    has labels, its mIoU."""
    out = Path(out)
    if out.suffix.lower() not in (".ply", ".npz"):
        raise ValueError(f"--out must end in .ply or .npz, got {str(out)!r}")
    xyz, rgb, label = read_points(scene)  # the input first: nothing loaded for a bad file
    model = load(run)
    names = read_run(run)["data"].get("class_names")
    pred = segment_points(model, xyz, rgb)
    if out.suffix.lower() == ".ply":
        write_ply(out, xyz, pred)
    else:
        from .._io import atomic_write

        atomic_write(out, lambda handle: np.savez_compressed(handle, xyz=xyz, label=pred))
    if plot is not None:
        from ..viz import plot_point_labels

        panels = (
            {"prediction": pred} if label is None else {"prediction": pred, "file's labels": label}
        )
        figure = plot_point_labels(xyz, panels, names)
        figure.suptitle(f"{Path(scene).name}: {len(xyz)} points, {model.config.name or 'model'}")
        figure.savefig(plot, dpi=110)
    counts = np.bincount(pred, minlength=model.num_classes)
    result: dict[str, Any] = dict(
        points=len(xyz),
        counts={(names[c] if names else str(c)): int(n) for c, n in enumerate(counts) if n},
    )
    if label is not None:
        labelled = label != IGNORE
        if labelled.any():
            matrix = confusion(
                torch.from_numpy(pred[labelled])[None],
                torch.from_numpy(label[labelled])[None],
                max(model.num_classes, int(label.max()) + 1),
            )
            result["miou"] = miou_score(matrix).value
    return result
