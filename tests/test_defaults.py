"""Training defaults chosen from the data, the run's plan, memory refusal, early stopping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ndformer.errors import UsageError
from ndformer.tasks import TaskData
from ndformer.tasks.base import suggest_patch, tokens_for
from ndformer.train import TrainConfig, fit
from ndformer.train.defaults import choose_defaults
from ndformer.train.plan import plan_run
from test_train import blobs_npz

TINY = dict(depth=1, dim=16, heads=2)


def fake_data(n_train: int, spatial: tuple[int, ...], classes: int = 3) -> TaskData:
    def split(n):
        return torch.zeros(n, 1, *spatial), torch.arange(n) % classes

    x, y = zip(*(split(n) for n in (n_train, 4, 4)))
    names = ("train", "val", "test")
    return TaskData("fake", "classification", classes, dict(zip(names, x)), dict(zip(names, y)),
                    patch=suggest_patch(spatial))  # fmt: skip


@pytest.mark.parametrize(
    "spatial, patch, tokens",
    [((16, 16, 16), 4, 64), ((28, 28), 2, 196), ((8, 8), 1, 64), ((64, 64), 4, 256),
     ((28, 28, 28), 6, 125), ((1000,), 4, 250), ((16, 16, 16, 16), 4, 256)],
)  # fmt: skip
def test_the_patch_gives_at_most_the_token_budget(spatial, patch, tokens):
    assert suggest_patch(spatial) == patch and tokens_for(spatial, patch) == tokens
    if patch > 1:  # the smallest such patch
        assert tokens_for(spatial, patch - 1) > {1: 256, 2: 256, 3: 128, 4: 256}[len(spatial)]


def choices_of(data, **given):
    fields, choices = choose_defaults(data, user_data=True, **given)
    return fields, {c.setting: c for c in choices}


def test_a_small_3d_data_set_gets_a_small_model_full_attention_and_epochs():
    fields, chosen = choices_of(fake_data(900, (16, 16, 16)))
    assert fields["model"] == "vit-tiny" and fields["patch"] == 4
    assert fields["overrides"] == dict(depth=4, dim=128, heads=2, drop_path=0.1)
    assert fields["pattern"] == "full" and chosen["tokens"].value == 64
    assert fields["batch_size"] == 64 and fields["steps"] == 120 * (900 // 64)
    assert not any(c.given for c in chosen.values())


def test_many_tokens_take_a_neighborhood_and_large_sets_fewer_epochs():
    fields, chosen = choices_of(fake_data(60_000, (16, 16, 16)), patch=1)
    assert chosen["patch"].given and chosen["tokens"].value == 4096
    assert fields["pattern"] == "neighborhood(5)"  # 4096 > 6 x 192
    assert fields["overrides"] == {} and fields["steps"] == 10 * (60_000 // 64)
    fields, _ = choices_of(fake_data(20_000, (64, 64)), patch=1)
    assert fields["pattern"] == "neighborhood(7)" and fields["overrides"] == dict(depth=6)


def test_given_settings_are_kept_and_reported_as_given():
    fields, chosen = choices_of(fake_data(900, (16, 16, 16)), model="hvit-tiny", epochs=3,
                                batch_size=10, overrides=dict(depth=[1, 1]))  # fmt: skip
    assert fields["model"] == "hvit-tiny" and fields["overrides"] == dict(depth=[1, 1])
    assert fields["steps"] == 3 * 90 and chosen["steps"].given and chosen["batch"].given
    assert chosen["pattern"].reason == "hvit-tiny's own" and "size" not in chosen
    with pytest.raises(ValueError, match="--steps or --epochs"):
        choose_defaults(fake_data(900, (8, 8)), steps=3, epochs=3)


def test_the_plan_measures_steps_and_memory_and_fits_a_time_budget(tmp_path):
    data = str(blobs_npz(tmp_path / "blobs.npz"))
    config = TrainConfig(data=data, overrides=TINY, steps=50, batch_size=8)
    from ndformer.train import resolve_data

    dataset = resolve_data(config)
    planned, plan = plan_run(config, dataset)
    assert planned.steps == 50 and plan.step_seconds > 0 and plan.evaluations == 10
    assert plan.activation_bytes > 0 and plan.peak_bytes > plan.baseline_bytes
    assert plan.seconds >= 50 * plan.step_seconds
    fitted, plan = plan_run(config, dataset, time_budget=0.05)
    fixed = 10 * plan.val_seconds + plan.test_seconds
    assert fitted.steps == int((3 - fixed) / plan.step_seconds) and "time budget" in plan.notes[0]


def test_a_run_that_would_not_fit_in_memory_is_refused_before_it_starts(tmp_path, monkeypatch):
    import ndformer.train.plan as plan_module

    data = str(blobs_npz(tmp_path / "blobs.npz"))
    config = TrainConfig(data=data, overrides=TINY, steps=5, batch_size=8)
    from ndformer.train import resolve_data

    dataset = resolve_data(config)
    monkeypatch.setattr(plan_module, "available_memory", lambda: 1024)
    with pytest.raises(UsageError, match=r"needs about .* per sample x batch 8.*--batch-size"):
        plan_run(config, dataset)


def test_a_huge_batch_is_refused_with_the_real_memory(tmp_path):
    data = str(blobs_npz(tmp_path / "blobs.npz", size=32))
    config = TrainConfig(data=data, patch=1, overrides=dict(depth=1), steps=5,
                         batch_size=10**7)  # fmt: skip  # 1024 tokens x 10^7 samples
    from ndformer.train import resolve_data

    with pytest.raises(UsageError, match="more than the"):
        plan_run(config, resolve_data(config))


def test_patience_stops_early_and_ends_with_the_best_weights(tmp_path):
    data = str(blobs_npz(tmp_path / "blobs.npz"))
    config = TrainConfig(data=data, overrides=TINY, steps=200, batch_size=8, eval_every=2,
                         eval_samples=20, lr=1e-12, patience=2)  # fmt: skip
    # no learning: no validation improves on the first (improving means strictly better)
    result = fit(config, tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert result.best_step == 2 and info["best_step"] == 2 and info["stopped_early"]
    assert result.steps == 6 and info["steps_done"] == 6  # validations at 2, 4, 6
    from safetensors.torch import load_file

    best = load_file(str(tmp_path / "run" / "best.safetensors"))
    final = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.equal(best[k], final[k]) for k in best)
    again = fit(config, tmp_path / "run", progress=False, resume=True)  # finished: re-scored
    assert again.score.value == result.score.value and again.best_step == 2


def test_train_dry_run_prints_the_plan_and_touches_nothing(tmp_path):
    from faults import cli

    data = blobs_npz(tmp_path / "blobs.npz")
    done = cli("train", "--data", str(data), "--out", str(tmp_path / "run"), "--dry-run",
               "--overrides", json.dumps(TINY), "--epochs", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = [
        "plan:",
        "patch    1",
        "tokens   144",
        "pattern  neighborhood(7)",
        "steps    8",
        "144 tokens > 6 x width 16",
        "time     about",
        "memory   about",
        "dry run",
    ]
    for text in expected:
        assert text in done.stdout, done.stdout
    assert not (tmp_path / "run").exists()
    np.testing.assert_equal(suggest_patch((12, 12)), 1)
