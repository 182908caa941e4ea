"""Bad data files (issue 17, cases 4-6 and 8): each gets one line naming the file, and a
refused run writes nothing. Command-line cases run ``python -m ndformer`` in a fresh process."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("typer")
pytest.importorskip("plyfile")

from faults import (
    cli_many,
    image_folder,
    medmnist,
    nifti_csv,
    one_line_error,
    point_folder,
    point_scene,
    truncate,
)
from ndformer.errors import DataError, UsageError
from ndformer.tasks import load_data

# 4. and 5. Broken files: one line naming the file ------------------------------------------


def _broken_inputs(tmp):
    cases = {}
    cases["truncated npz"] = truncate(medmnist(tmp / "t.npz"), 0.6)
    (tmp / "empty.npz").write_bytes(b"")
    cases["empty npz"] = tmp / "empty.npz"
    (tmp / "garbage.npz").write_bytes(os.urandom(3000))
    cases["garbage npz"] = tmp / "garbage.npz"
    np.savez(tmp / "pickled.npz", train_images=np.array([object()], dtype=object))
    cases["pickled npz"] = tmp / "pickled.npz"
    folder = point_folder(tmp / "novertex", scenes=3)
    header = b"ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\n"
    (folder / "scene0.ply").write_bytes(header + b"end_header\n")
    cases["ply without vertex"] = folder
    folder = point_folder(tmp / "truncply", scenes=3)
    truncate(folder / "scene1.ply", 0.5)
    cases["truncated ply"] = folder
    folder = image_folder(tmp / "notimage")
    (folder / "a" / "9.png").write_bytes(b"this is not a png")
    cases["non-image png"] = folder
    folder = image_folder(tmp / "nosplitclass", splits=True)
    for f in (folder / "val" / "b").iterdir():
        f.unlink()
    (folder / "val" / "b").rmdir()
    cases["val split without a class folder"] = folder
    csv_path = nifti_csv(tmp / "nii")
    truncate(tmp / "nii" / "v2.nii.gz", 0.5)
    cases["truncated nii.gz"] = csv_path
    return cases


EXPECTED = {
    "truncated npz": "not a readable",
    "empty npz": "the file is empty",
    "garbage npz": "not a readable",
    "pickled npz": "holds Python objects",
    "ply without vertex": "no 'vertex' element",
    "truncated ply": "not a readable .ply",
    "non-image png": "not a readable image",
    "val split without a class folder": "differ from ['a', 'b']",
    "truncated nii.gz": "v2.nii.gz' is unreadable",
}


def test_broken_files_get_one_line_naming_them(tmp_path):
    cases = _broken_inputs(tmp_path)
    outs = {case: tmp_path / f"run-{case.replace(' ', '-')}" for case in cases}
    commands = [["train", "--data", str(p), "--out", str(outs[c]), "--steps", "1"]
                for c, p in cases.items()]  # fmt: skip
    for (case, out), done in zip(outs.items(), cli_many(commands), strict=True):
        line = one_line_error(done)
        assert EXPECTED[case] in line, (case, line)
        assert "allow_pickle" not in line and "Aborted" not in line, line
        assert not out.exists(), case  # nothing written for a refused run


# 6. NaN and inf ---------------------------------------------------------------------------


def test_non_finite_data_is_refused(tmp_path):
    images = np.random.default_rng(0).normal(size=(30, 8, 8)).astype(np.float32)
    images[3, 2, 2] = np.nan
    path = medmnist(tmp_path / "nan.npz", train_images=images)
    with pytest.raises(DataError, match="train images hold 1 NaN or infinite"):
        load_data(path)
    xyz = np.random.default_rng(0).uniform(0, 1, (200, 3)).astype(np.float32)
    xyz[5, 1] = np.inf
    folder = point_folder(tmp_path / "pts", scenes=3)
    point_scene(folder / "scene2.ply", xyz=xyz)
    with pytest.raises(DataError, match=r"scene2.ply: 1 point\(s\) have NaN or infinite"):
        load_data(folder)


def test_divergence_message_tells_the_truth(tmp_path):
    from ndformer.train.step import _kept

    assert _kept(tmp_path) == "no checkpoint was written yet"


# 8. Labels and splits ----------------------------------------------------------------------


def test_label_and_split_problems(tmp_path):
    test_labels = np.zeros((9, 1), np.int64)
    test_labels[4] = 1000
    with pytest.raises(DataError, match=r"test_labels reach 1000 but train_labels only 0\.\.2"):
        load_data(medmnist(tmp_path / "big.npz", test_labels=test_labels))
    folder = image_folder(tmp_path / "img", classes=("a", "b", "c"))
    for f in (folder / "c").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="c: an empty class folder"):
        load_data(folder)
    for scenes in (3, 4, 5):
        data = load_data(point_folder(tmp_path / f"p{scenes}", scenes=scenes))
        assert all(data.num_samples(s) >= 1 for s in ("train", "val", "test"))
    empty_val = dict(val_images=np.zeros((0, 8, 8), np.uint8), val_labels=np.zeros((0, 1), int))
    with pytest.raises(DataError, match="the val split is empty"):
        load_data(medmnist(tmp_path / "noval.npz", **empty_val))


def test_upper_case_suffix_and_single_scene(tmp_path):
    assert load_data(medmnist(tmp_path / "data.NPZ")).num_classes == 3
    point_scene(tmp_path / "one.ply")
    with pytest.raises(UsageError, match="is one point cloud; training needs a folder"):
        load_data(tmp_path / "one.ply")
