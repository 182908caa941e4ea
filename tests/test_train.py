"""Training: exact resume, atomic checkpoints, clear stops, learning user data, load + evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ndformer
from ndformer.cli import build_app
from ndformer.train import TrainConfig, TrainingError, accuracy_score, fit, miou_score, resolve_data
from ndformer.train import checkpoint as checkpoint_module  # where atomic_write is looked up
from ndformer.train.metrics import confusion

TINY = dict(depth=1, dim=16, heads=2, patch=2)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NDFORMER_CACHE", str(tmp_path / "cache"))


def blobs_npz(path, n=(300, 60, 100), size=12, seed=0):
    """2 classes: a bright blob in the left or in the right half of a noisy image."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        labels = rng.integers(0, 2, count)
        images = rng.normal(0, 0.3, (count, size, size))
        for image, label in zip(images, labels):
            r, c = rng.integers(2, size - 2), rng.integers(2, size // 2 - 1)
            c += label * (size // 2)
            image[r - 1 : r + 2, c - 1 : c + 2] += 2.0
        arrays[f"{split}_images"] = images.astype(np.float32)
        arrays[f"{split}_labels"] = labels[:, None]
    np.savez(path, **arrays)
    return path


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    data = str(blobs_npz(tmp_path / "blobs.npz"))
    config = TrainConfig(data=data, model="vit-tiny", overrides=TINY, steps=8, batch_size=16,
                         eval_every=3, eval_samples=20)  # fmt: skip
    straight = fit(config, tmp_path / "straight", progress=False)
    stopped = fit(config, tmp_path / "resumed", progress=False, stop_after=5)
    assert stopped.steps == 5 and stopped.score is None
    resumed = fit(config, tmp_path / "resumed", progress=False, resume=True)
    a, b = weights(straight.model), weights(resumed.model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.score == resumed.score
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["3", "5", "6", "8"]


def test_resume_refuses_changed_settings_and_fresh_runs_refuse_to_overwrite(tmp_path):
    data = str(blobs_npz(tmp_path / "blobs.npz"))
    config = TrainConfig(data=data, overrides=TINY, steps=2, batch_size=8, eval_samples=8)
    fit(config, tmp_path / "run", progress=False)
    with pytest.raises(TrainingError, match="already holds a run"):
        fit(config, tmp_path / "run", progress=False)
    changed = TrainConfig(data=data, overrides=TINY, steps=2, batch_size=8, lr=0.1)
    with pytest.raises(TrainingError, match=r"differ from the saved run in \['eval_samples', 'lr'"):
        fit(changed, tmp_path / "run", progress=False, resume=True)


def stopped_after_two_of_six(tmp_path) -> TrainConfig:
    """A 6-step run in tmp_path/run, stopped after its checkpoint at step 2."""
    data = str(blobs_npz(tmp_path / "blobs.npz"))
    config = TrainConfig(data=data, overrides=TINY, steps=6, batch_size=8, eval_every=2,
                         eval_samples=8)  # fmt: skip
    fit(config, tmp_path / "run", progress=False, stop_after=2)
    return config


def test_a_crash_while_writing_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    config = stopped_after_two_of_six(tmp_path)
    good_weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    good_state = (tmp_path / "run" / "state.pt").read_bytes()

    def crash(handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    real = checkpoint_module.atomic_write

    def failing(path, write):
        return real(path, crash)

    monkeypatch.setattr(checkpoint_module, "atomic_write", failing)
    with pytest.raises(OSError, match="disk full"):
        fit(config, tmp_path / "run", progress=False, resume=True)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == good_weights
    assert (tmp_path / "run" / "state.pt").read_bytes() == good_state
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(checkpoint_module, "atomic_write", real)
    resumed = fit(config, tmp_path / "run", progress=False, resume=True)
    assert resumed.steps == 6


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    config = stopped_after_two_of_six(tmp_path)
    before = (tmp_path / "run" / "state.pt").read_bytes()
    import torch.nn.functional as F

    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    message = r"loss became nan at step 3 .* the checkpoint of step 2 in .* is intact"
    with pytest.raises(TrainingError, match=message):
        fit(config, tmp_path / "run", progress=False, resume=True)
    assert (tmp_path / "run" / "state.pt").read_bytes() == before


def test_mismatched_model_and_data_fail_before_training(tmp_path):
    data = str(blobs_npz(tmp_path / "blobs.npz"))
    config = TrainConfig(data=data, overrides=dict(TINY, ndim=3), steps=2)
    with pytest.raises(TrainingError, match="ndim 3 vs the data's 2"):
        fit(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "state.pt").exists()


def test_learns_user_data_and_load_plus_evaluate_reproduce_the_metric(tmp_path):
    data = blobs_npz(tmp_path / "blobs.npz")
    runner = CliRunner()
    app = build_app()
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), "--steps", "80",
                                 "--batch-size", "32", "--lr", "3e-3", "--overrides",
                                 json.dumps(dict(depth=2, dim=32, heads=2))])  # fmt: skip
    assert result.exit_code == 0, result.output
    reported = json.loads((out / "run.json").read_text())["test"]
    assert reported["value"] >= 0.9
    model = ndformer.load(out)
    assert not model.training
    evaluated = runner.invoke(app, ["evaluate", str(out)])
    assert evaluated.exit_code == 0, evaluated.output
    assert f"{100 * reported['value']:.2f}%" in evaluated.output


def test_teacher_conv_is_trained_first_and_distilled(tmp_path):
    data = str(blobs_npz(tmp_path / "blobs.npz"))
    config = TrainConfig(data=data, overrides=TINY, steps=4, batch_size=8, teacher="conv",
                         teacher_steps=3, eval_samples=8)  # fmt: skip
    result = fit(config, tmp_path / "run", progress=False)
    teacher = json.loads((tmp_path / "run" / "teacher" / "run.json").read_text())
    assert teacher["status"] == "done" and teacher["train"]["model"] == "conv-tiny"
    assert result.score is not None


def test_scores_and_intervals():
    score = accuracy_score(90, 100)
    assert score.value == 0.9 and score.low < 0.9 < score.high
    assert round(score.low, 4) == 0.8256 and round(score.high, 4) == 0.9448  # Wilson, z=1.96
    target = torch.tensor([[0, 1, 1, 2]])
    matrix = confusion(torch.tensor([[0, 1, 2, 2]]), target, 3)
    assert matrix[0].tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    perfect = miou_score(confusion(target.repeat(5, 1), target.repeat(5, 1), 3))
    assert (perfect.value, perfect.low, perfect.high) == (1.0, 1.0, 1.0)
    half = miou_score(matrix.repeat(4, 1, 1))
    assert half.value == pytest.approx((1 + 0.5 + 0.5) / 3)


@pytest.mark.parametrize(
    "command", ["train", "evaluate", "predict", "arena", "bench", "show", "info", "patterns"]
)
def test_every_command_has_help_with_examples(command):
    result = CliRunner().invoke(build_app(), [command, "--help"])
    assert result.exit_code == 0 and "Examples" in result.output


def test_cli_reports_bad_input_clearly(tmp_path):
    runner, app = CliRunner(), build_app()
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "nope.npz"), "--out", "x"])
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())
    result = runner.invoke(app, ["train", "--task", "digits", "--data", "y", "--out", "x"])
    assert result.exit_code == 2 and "exactly one of task" in result.output


def test_arena_writes_report_csv_and_pareto_plot(tmp_path):
    data = blobs_npz(tmp_path / "blobs.npz", n=(64, 16, 32))
    out = tmp_path / "arena"
    args = ["arena", "--data", str(data), "--patterns", "full", "--patterns", "window(2)",
            "--steps", "3", "--token-merging", "4", "--keep-rate", "0.5",
            "--overrides", json.dumps({**TINY, "depth": 2}),
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("pattern,seed,metric,value,ci_low,ci_high")
    report = (out / "report.md").read_text()
    assert "| `full` |" in report and "| `window(2)` |" in report and "pareto.png" in report
    assert "| `full + tome(4)` |" in report and "| `full + evit(0.5)` |" in report
    assert (out / "pareto.png").stat().st_size > 1000
    # full attention's FLOPs on a 6x6 token grid: 2 blocks * 4 * 36 * 36 * head_dim 8 * 2 heads
    full = next(r for r in rows[1:] if r.startswith("full,"))
    assert float(full.split(",")[12]) == pytest.approx(2 * 4 * 36 * 36 * 8 * 2 / 1e9)
    # EViT(0.5) over 2 blocks fuses after the first: 36 tokens, then 18 kept + 1 fused
    evit = next(r for r in rows[1:] if r.startswith("full + evit(0.5),"))
    assert float(evit.split(",")[12]) == pytest.approx(4 * (36**2 + 19**2) * 8 * 2 / 1e9)


@pytest.mark.slow
def test_the_default_training_of_digits_reaches_95_percent(tmp_path):
    # what `ndformer train --task digits --out RUN` trains (about 2 minutes on 2 cores)
    from ndformer.train.defaults import choose_defaults

    data = resolve_data(TrainConfig(task="digits"))
    fields, _ = choose_defaults(data)
    result = fit(TrainConfig(task="digits", **fields), tmp_path / "digits", data=data,
                 progress=False)  # fmt: skip
    assert result.score.value >= 0.95, result.score


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    data = str(blobs_npz(tmp_path / "blobs.npz"))
    fields = dict(data=data, overrides=TINY, steps=300, batch_size=16, eval_every=5,
                  eval_samples=8)  # fmt: skip
    script = (
        "import sys, json; from ndformer.train import TrainConfig, fit;"
        "fit(TrainConfig(**json.loads(sys.argv[1])), sys.argv[2], progress=False)"
    )
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(fields), str(out)],
                               env=dict(os.environ))  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "state.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(out / "state.pt", weights_only=False)["step"]
    assert 0 < saved < fields["steps"], "the kill should land mid-run"
    resumed = fit(TrainConfig(**fields), out, progress=False, resume=True)
    straight = fit(TrainConfig(**fields), tmp_path / "straight", progress=False)
    a, b = weights(straight.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_segmentation_runs_end_to_end_with_miou(tmp_path):
    config = TrainConfig(task="scenes3d-12", overrides=TINY, steps=2, batch_size=4, eval_samples=4)
    result = fit(config, tmp_path / "seg", progress=False)
    assert result.score.metric == "miou" and 0 <= result.score.low <= result.score.high <= 1
