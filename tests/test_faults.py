"""Bad input and faults (issue 17; bad data files are in test_faults_data.py): each case
gets one clear line, nothing silently wrong, nothing lost. Command-line cases run
``python -m ndformer`` in a fresh process."""

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
    medmnist,
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
    args = ["train", "--task", "digits", "--out", str(finished_run), "--resume"]
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
