"""Bad input and faults (issue 17): each case gets one clear line, nothing silently wrong,
nothing lost. Command-line cases run ``python -m ndformer`` in a fresh process."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("typer")
pytest.importorskip("plyfile")

from faults import (
    cli,
    cli_many,
    image_folder,
    medmnist,
    nifti_csv,
    one_line_error,
    point_folder,
    point_scene,
    snapshot,
    truncate,
)
from ndformer import attend
from ndformer._io import exclusive_dir
from ndformer.errors import DataError, UsageError
from ndformer.patterns import pattern
from ndformer.tasks import load_data

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


# 1. Messages keep their brackets -------------------------------------------------------


def test_messages_keep_brackets(tmp_path):
    scene = tmp_path / "empty.npz"
    np.savez(scene, xyz=np.zeros((0, 3), np.float32))
    line = one_line_error(cli("predict", str(tmp_path), str(scene), "--out", "p.ply"))
    assert "xyz must be [n >= 1, 3], got (0, 3)" in line
    flat = medmnist(tmp_path / "flat.npz", train_images=np.zeros((30, 64), np.uint8))
    line = one_line_error(cli("train", "--data", str(flat), "--out", str(tmp_path / "r")))
    assert "expected [n, H, W], [n, H, W, C] or [n, D, H, W]" in line


def test_install_hint_keeps_its_extra(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ndformer.cli import build_app

    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label\nx.nii.gz,a\n")
    monkeypatch.setitem(sys.modules, "nibabel", None)
    result = CliRunner().invoke(build_app(), ["train", "--data", str(csv_path), "--out", "r"])
    assert result.exit_code == 2
    assert "pip install 'ndformer[all]'" in result.output


def test_zero_point_scene_message_is_intact(tmp_path):
    from ndformer.tasks import read_points

    np.savez(tmp_path / "s.npz", xyz=np.zeros((0, 3), np.float32))
    with pytest.raises(DataError, match=r"xyz must be \[n >= 1, 3\], got \(0, 3\)"):
        read_points(tmp_path / "s.npz")


# 2. Zero is a value, not "default" --------------------------------------------------------


ZERO_CASES = [
    (("arena", "--task", "digits", "--minutes", "0"), "minutes must be > 0"),
    (("arena", "--task", "digits", "--steps", "0"), "steps must be >= 1"),
    (("train", "--task", "digits", "--batch-size", "0", "--out", "r"), "--batch-size must"),
    (("train", "--task", "digits", "--patch", "0", "--out", "r"), "--patch must be >= 1"),
    (("train", "--task", "digits", "--steps", "0", "--out", "r"), "--steps must be >= 1"),
]


def test_zero_is_refused_not_defaulted(tmp_path):
    results = cli_many([list(args) for args, _ in ZERO_CASES], cwd=tmp_path)
    for (_, message), done in zip(ZERO_CASES, results, strict=True):
        assert message in one_line_error(done, code=2)
    assert not (tmp_path / "r").exists()


# 3. One run per directory -----------------------------------------------------------------


def test_second_run_into_a_locked_out_fails_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    with exclusive_dir(out):
        done = cli("train", "--task", "digits", "--steps", "1", "--out", str(out))
        line = one_line_error(done)
    assert f"is in use by pid {os.getpid()}" in line
    assert snapshot(out) == {}  # the lock is gone with its holder


def test_stale_lock_file_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("pid 999999 on elsewhere, started 00:00:00: ndformer train")
    # No process holds the flock: a crashed run's leftover is taken over; a live holder is not.
    with exclusive_dir(out), pytest.raises(DataError, match="in use by pid"), exclusive_dir(out):
        pass


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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished training run (digits, 2 steps)."""
    from ndformer.train import TrainConfig, fit

    out = tmp_path_factory.mktemp("runs") / "digits"
    config = TrainConfig(task="digits", model="vit-tiny", overrides=dict(depth=1, dim=32, heads=2),
                         steps=2, batch_size=8, eval_samples=50)  # fmt: skip
    fit(config, out, progress=False)
    return out


def _copy(run, to):
    import shutil

    shutil.copytree(run, to)
    return to


def test_evaluate_on_truncated_weights(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    truncate(run / "model.safetensors", 0.5)
    line = one_line_error(cli("evaluate", str(run)))
    assert "model.safetensors: unreadable weights" in line


def test_resume_with_truncated_state(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    truncate(run / "state.pt", 0.5)
    before = snapshot(run)
    args = json.loads((run / "run.json").read_text())["train"]
    done = cli("train", "--task", "digits", "--steps", str(args["steps"]), "--batch-size", "8",
               "--overrides", json.dumps(args["overrides"]), "--out", str(run),
               "--resume")  # fmt: skip
    line = one_line_error(done)
    assert "state.pt: unreadable resume state" in line
    assert snapshot(run) == before


def test_out_that_is_a_file_or_read_only(tmp_path):
    (tmp_path / "file").write_text("x")
    line = one_line_error(cli("train", "--task", "digits", "--out", str(tmp_path / "file")), 2)
    assert "is an existing file, not a folder" in line
    if not ROOT:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        line = one_line_error(cli("train", "--task", "digits", "--out", str(locked / "r")), 2)
        assert "is not writable" in line


def test_negative_point_labels_are_refused(tmp_path):
    folder = point_folder(tmp_path / "neg", scenes=3)
    point_scene(folder / "scene1.ply", label=np.full(200, -5))
    line = one_line_error(cli("train", "--data", str(folder), "--model", "volt-tiny", "--out", "r",
                              cwd=tmp_path))  # fmt: skip
    assert "scene1.ply: labels hold -5" in line


REFUSED = [
        (("show", "window(4)", "--out", "x.txt"), "cannot draw a .txt file", 2),
        (("show", "window(4)", "--shape", "100000x100000"), "more than the", 2),
        (("bench", "--patterns", "window(4)", "--shapes", "100000x100000"), "more than the", 2),
        (("show", "|".join(["full"] * 1000)), "at most 2000", 2),
        (("show", "|".join(["full"] * 300)), "nested", 2),
        (("show", f"window({10**400})"), "out of range", 2),
        (("show", "window(size=8, size=4)"), "keyword 'size' given more than once", 2),
        (("show", "window(4)", "--heads", "0"), "heads must be >= 1", 2),
        (("info", "--device", "meta"), "only cpu and cuda", 2),
]  # fmt: skip


def test_requests_refused_up_front(tmp_path):
    results = cli_many([list(args) for args, _, _ in REFUSED], cwd=tmp_path)
    for (args, message, code), done in zip(REFUSED, results, strict=True):
        assert message in one_line_error(done, code), args
    assert snapshot(tmp_path) == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine has the device")
def test_info_on_cuda_without_cuda():
    assert "CUDA is not available" in one_line_error(cli("info", "--device", "cuda"), 2)


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


# 7. Resuming a finished run ----------------------------------------------------------------


def test_resume_of_finished_run_repairs_weights_and_keeps_its_record(finished_run, tmp_path):
    from ndformer.train import TrainConfig, fit, load

    run = _copy(finished_run, tmp_path / "run")
    record = json.loads((run / "run.json").read_text())
    truncate(run / "model.safetensors", 0.3)
    config = TrainConfig(**record["train"])
    result = fit(config, run, resume=True, progress=False)
    load(run)  # readable again: rewritten from the verified resume state
    after = json.loads((run / "run.json").read_text())
    assert after["samples_per_s"] == record["samples_per_s"] > 0
    assert after["test"] == record["test"] and result.score.to_dict() == record["test"]
    longer = TrainConfig(**dict(record["train"], steps=config.steps + 5))
    with pytest.raises(DataError, match="start a new run with the larger --steps"):
        fit(longer, run, resume=True, progress=False)


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


# 9. Misleading messages ---------------------------------------------------------------------


def test_model_for_the_wrong_kind_of_data(tmp_path):
    line = one_line_error(cli("train", "--task", "digits", "--model", "volt-tiny", "--out", "r",
                              cwd=tmp_path))  # fmt: skip
    assert (
        "--model volt-tiny takes point clouds but digits holds grids; try --model vit-tiny" in line
    )
    assert "head" not in line


def test_show_out_names_the_file_written(tmp_path):
    done = cli("show", "window(4)", "--shape", "8x8", "--out", "mask", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote mask.png" in done.stdout
    assert (tmp_path / "mask.png").read_bytes()[:4] == b"\x89PNG"
    assert oct((tmp_path / "mask.png").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_upper_case_suffix_and_single_scene(tmp_path):
    assert load_data(medmnist(tmp_path / "data.NPZ")).num_classes == 3
    point_scene(tmp_path / "one.ply")
    with pytest.raises(UsageError, match="is one point cloud; training needs a folder"):
        load_data(tmp_path / "one.ply")


# 10. Tensors and specs -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_attend_needs_floating_point(dtype):
    q = torch.ones(1, 1, 16, 4, dtype=dtype)
    with pytest.raises(ValueError, match="q, k and v must be floating point; got torch"):
        attend(q, q, q, "window(4)", (16,))


def test_duplicate_keywords_are_refused():
    with pytest.raises(UsageError, match="keyword 'size' given more than once"):
        pattern("window(size=8, size=4)")


# 11. Minor ------------------------------------------------------------------------------------


def test_version_and_debug():
    from ndformer import __version__

    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"ndformer {__version__}"
    done = cli("--debug", "show", "windw(4)")
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_interrupted_bench_exits_non_zero(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from ndformer.bench import cli as bench_cli
    from ndformer.cli import build_app

    class Row:
        note = "not run (interrupted)"

    monkeypatch.setattr(bench_cli, "run_bench_command", lambda *a: [Row()])
    result = CliRunner().invoke(build_app(), ["bench", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 130


def test_interrupted_train_names_the_checkpoint(monkeypatch, finished_run):
    from typer.testing import CliRunner

    import ndformer.train as train
    from ndformer.cli import build_app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", interrupted)
    args = ["train", "--task", "digits", "--out", str(finished_run)]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 130
    assert "the checkpoint of step 2 is intact: continue with --resume" in result.output


def test_read_only_out_is_refused_before_anything_runs(tmp_path, monkeypatch):
    """The same check as the CLI case above, for machines where the tests run as root."""
    from ndformer._io import check_output_dir

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(UsageError, match="is not writable"):
        check_output_dir(tmp_path / "r", create=False)
    with pytest.raises(UsageError, match="is not writable"):
        check_output_dir(tmp_path / "r")
