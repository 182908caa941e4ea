"""The generated organ task and Dice, the medical-segmentation metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ndformer.tasks import load_task
from ndformer.tasks.organs import ORGAN_CLASSES, organs3d
from ndformer.train.metrics import confusion, dice_score


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NDFORMER_CACHE", str(tmp_path / "cache"))


def test_organ_volumes_are_deterministic_imbalanced_and_not_separable_by_intensity():
    x, y = organs3d(40, 24, seed=3)
    again = organs3d(40, 24, seed=3)
    assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])
    assert x.shape == (40, 1, 24, 24, 24) and x.dtype == np.float16
    assert y.shape == (40, 24, 24, 24) and y.max() < len(ORGAN_CLASSES)
    share = np.bincount(y.ravel(), minlength=4) / y.size
    assert share[0] > 0.8 and 0.03 < share[1] < 0.2 and share[3] < share[2] < share[1]
    has_lesion = (y == 3).any(axis=(1, 2, 3))
    assert 0.4 < has_lesion.mean() < 0.95  # some cases have no lesion at all
    # organs overlap in intensity: the best single threshold between liver and kidney
    # voxels misclassifies a sizeable fraction (texture, noise and bias field)
    liver, kidney = x[:, 0][y == 1].astype(float), x[:, 0][y == 2].astype(float)
    errors = [((liver > t).mean() + (kidney <= t).mean()) / 2 for t in np.linspace(0, 1, 101)]
    assert min(errors) > 0.1


def test_the_task_reports_dice_and_is_split_like_the_other_tasks():
    task = load_task("organs3d-16")
    assert task.kind == "segmentation" and task.metric == "dice"
    assert task.class_names == list(ORGAN_CLASSES)
    assert tuple(task.x["train"].shape[1:]) == (1, 16, 16, 16)
    assert [len(task.y[s]) for s in ("train", "val", "test")] == [240, 40, 80]
    with pytest.raises(ValueError, match="organs3d size must be >= 16"):
        load_task("organs3d-8")


def brute_force_dice(pred: np.ndarray, target: np.ndarray, classes: int) -> float:
    """Mean over cases of the mean foreground Dice, from voxel sets (the definition)."""
    cases = []
    for p, t in zip(pred, target):
        scores = []
        for c in range(1, classes):
            in_p = {i for i, v in enumerate(p.ravel()) if v == c}
            in_t = {i for i, v in enumerate(t.ravel()) if v == c}
            if in_p or in_t:
                scores.append(2 * len(in_p & in_t) / (len(in_p) + len(in_t)))
        if scores:
            cases.append(sum(scores) / len(scores))
    return sum(cases) / len(cases) if cases else math.nan


@settings(max_examples=40, deadline=None)
@given(
    cases=st.integers(1, 5),
    voxels=st.integers(1, 30),
    classes=st.integers(2, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_dice_equals_its_definition(cases, voxels, classes, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, classes, (cases, voxels))
    pred = np.where(
        rng.random((cases, voxels)) < 0.6, target, rng.integers(0, classes, (cases, voxels))
    )
    score = dice_score(confusion(torch.from_numpy(pred), torch.from_numpy(target), classes))
    expected = brute_force_dice(pred, target, classes)
    if math.isnan(expected):
        assert score.n == 0 and math.isnan(score.value)
    else:
        assert score.value == pytest.approx(expected, rel=1e-12)
        assert score.low <= score.value + 1e-12 and score.value <= score.high + 1e-12


def test_dice_scores_false_positives_in_a_case_without_the_class():
    target = torch.zeros(1, 10, dtype=torch.long)
    pred = target.clone()
    pred[0, 0] = 1  # a lesion predicted in a lesion-free case: Dice 0, not ignored
    assert dice_score(confusion(pred, target, 2)).value == 0.0
    assert dice_score(confusion(target, target, 2)).n == 0  # nothing to score
