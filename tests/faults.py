"""Small crafted files for the fault tests: valid ones, and ways to break them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parent.parent / "src"


def cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``ndformer ARGS`` in a fresh process (as a user runs it), output captured."""
    env = dict(os.environ, PYTHONPATH=str(SRC), NDFORMER_DEBUG="0", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "ndformer", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )


#: Runs several command lines in one fresh process (one interpreter start for all of them):
#: each through ``ndformer.cli.main`` as the console script does, its output captured.
DRIVER = """
import contextlib, io, json, sys
from ndformer.cli import main
results = []
for args in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def cli_many(commands: list[list[str]], cwd: Path | None = None) -> list:
    """``ndformer ARGS`` for each of ``commands`` in one fresh process: CompletedProcess-like
    results (``returncode``, ``stdout``, ``stderr``)."""
    env = dict(os.environ, PYTHONPATH=str(SRC), NDFORMER_DEBUG="0", COLUMNS="200")
    done = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(commands),
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
                          check=True)  # fmt: skip
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return [subprocess.CompletedProcess(c, code, out, err)
            for c, (code, out, err) in zip(commands, results, strict=True)]  # fmt: skip


def one_line_error(done: subprocess.CompletedProcess, code: int = 1) -> str:
    """The one ``error: ...`` line of a failed command (asserting there is no traceback)."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def medmnist(path: Path, n=(30, 6, 9), size=8, classes=3, seed=0, **replace) -> Path:
    """A valid MedMNIST-layout ``.npz`` of 2-D images (``replace`` swaps arrays)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 255, (count, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(count)[:, None] % classes
    arrays.update(replace)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    with open(path, "wb") as handle:  # np.savez(path) would append .npz to data.NPZ
        np.savez(handle, **arrays)
    return path


def point_scene(path: Path, n: int = 200, seed: int = 0, label=None, xyz=None) -> Path:
    """A labelled point scene as ``.ply`` (x, y, z, red, green, blue, label)."""
    from ndformer.tasks import write_ply

    rng = np.random.default_rng(seed)
    xyz = rng.uniform(0, 2, (n, 3)).astype(np.float32) if xyz is None else xyz
    label = (np.arange(len(xyz)) % 3).astype(np.int64) if label is None else label
    write_ply(path, xyz, label)
    return path


def point_folder(root: Path, scenes: int = 4, **kwargs) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(scenes):
        point_scene(root / f"scene{i}.ply", seed=i, **kwargs)
    return root


def image_folder(root: Path, classes=("a", "b"), per_class: int = 4, splits: bool = False) -> Path:
    """Class folders of small PNGs (or train/val/test folders of them)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test") if splits else ("",):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (8, 8), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def nifti_csv(root: Path, volumes: int = 6) -> Path:
    """A ``.csv`` of ``path,label`` rows naming small ``.nii.gz`` volumes."""
    import nibabel

    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for i in range(volumes):
        data = np.random.default_rng(i).normal(size=(6, 6, 6)).astype(np.float32)
        nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), str(root / f"v{i}.nii.gz"))
        rows.append(f"v{i}.nii.gz,{'ab'[i % 2]}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root / "list.csv"


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (nothing if it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
