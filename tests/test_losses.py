"""Training losses against their definitions: the Lovász-softmax loss (a brute-force
Lovász extension of the Jaccard loss, computed from sets), label smoothing and the soft
Dice loss (written out with loops)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ndformer.tasks.points import IGNORE
from ndformer.train.losses import (
    lovasz_extension,
    lovasz_softmax,
    soft_dice_loss,
    supervised_loss,
)


def jaccard_loss(wrong: set[int], truth: list[bool]) -> float:
    """Delta(M) = |M| / |G ∪ M| for the set M of wrong outputs, G those of the class."""
    union = {i for i, t in enumerate(truth) if t} | wrong
    return len(wrong) / len(union) if union else 0.0


def lovasz_by_thresholds(errors: list[float], truth: list[bool]) -> float:
    """The Lovász extension as the integral over t in [0, 1] of Delta({i : m_i >= t}):
    piecewise constant between the distinct error values."""
    levels = sorted(set(errors) | {0.0}, reverse=True)
    total = 0.0
    for high, low in itertools.pairwise(levels):
        total += (high - low) * jaccard_loss({i for i, m in enumerate(errors) if m >= high}, truth)
    return total


@given(
    errors=st.lists(st.floats(0, 1), min_size=1, max_size=12),
    seed=st.integers(0, 2**31 - 1),
)
def test_the_lovasz_extension_integrates_the_jaccard_loss_over_thresholds(errors, seed):
    gen = torch.Generator().manual_seed(seed)
    truth = (torch.rand(len(errors), generator=gen) < 0.5).tolist()
    got = lovasz_extension(torch.tensor(errors, dtype=torch.float64), torch.tensor(truth))
    assert got.item() == pytest.approx(lovasz_by_thresholds(errors, truth), rel=1e-12, abs=1e-12)
    # on a set's indicator it is the set function itself
    indicator = [float(e > 0.5) for e in errors]
    wrong = {i for i, m in enumerate(indicator) if m}
    got = lovasz_extension(torch.tensor(indicator, dtype=torch.float64), torch.tensor(truth))
    assert got.item() == pytest.approx(jaccard_loss(wrong, truth), abs=1e-12)


@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_lovasz_softmax_averages_the_present_classes_over_labelled_outputs(data, seed):
    gen = torch.Generator().manual_seed(seed)
    classes = data.draw(st.integers(2, 5))
    shape = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))  # B, *spatial
    logits = torch.randn(shape[0], classes, *shape[1:], generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (shape[0], *shape[1:]), generator=gen)
    labels[torch.rand(labels.shape, generator=gen) < 0.2] = IGNORE
    probs = logits.softmax(1).movedim(1, -1).reshape(-1, classes).tolist()
    flat = labels.reshape(-1).tolist()
    kept = [i for i, y in enumerate(flat) if y != IGNORE]
    present = sorted({flat[i] for i in kept})
    want = []
    for c in present:
        truth = [flat[i] == c for i in kept]
        errors = [abs(float(t) - probs[i][c]) for i, t in zip(kept, truth)]
        want.append(lovasz_by_thresholds(errors, truth))
    got = lovasz_softmax(logits, labels)
    if not present:
        assert got.item() == 0
        return
    assert got.item() == pytest.approx(sum(want) / len(want), rel=1e-10, abs=1e-12)
    flat_logits = logits.movedim(1, -1).reshape(-1, classes)
    assert torch.equal(lovasz_softmax(flat_logits, labels.reshape(-1)), got)  # [N, C] alike


def test_lovasz_softmax_gradients_are_its_derivative():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (12,), generator=gen)
    assert torch.autograd.gradcheck(lambda x: lovasz_softmax(x, labels), (logits,))
    # a perfect prediction costs nothing; a wrong one costs the class's whole Jaccard loss
    sure = torch.nn.functional.one_hot(labels, 3).double() * 50
    assert lovasz_softmax(sure, labels).item() == pytest.approx(0, abs=1e-12)
    assert lovasz_softmax(sure.roll(1, dims=1), labels).item() == pytest.approx(1.0)


@given(seed=st.integers(0, 2**31 - 1), smoothing=st.floats(0, 0.5), lovasz=st.booleans())
def test_label_smoothing_spreads_the_target_and_lovasz_adds(seed, smoothing, lovasz):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 3, 3), generator=gen)
    labels[0, 0, 0] = IGNORE
    log_p = logits.log_softmax(1).movedim(1, -1).reshape(-1, 4)
    flat = labels.reshape(-1)
    keep = flat != IGNORE
    target = torch.full((int(keep.sum()), 4), smoothing / 4, dtype=torch.float64)
    target[torch.arange(len(target)), flat[keep]] += 1 - smoothing
    want = -(target * log_p[keep]).sum(1).mean()
    if lovasz:
        want = want + lovasz_softmax(logits, labels)
    got = supervised_loss(logits, labels, smoothing, lovasz)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)


def soft_dice_by_loops(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """1 - mean over samples and classes of (2 sum p g + 1e-5) / (sum p + sum g + 1e-5)."""
    probs = logits.softmax(1)
    scores = []
    for b in range(logits.shape[0]):
        for c in range(logits.shape[1]):
            p = [
                float(v) for v, y in zip(probs[b, c].flatten(), labels[b].flatten()) if y != IGNORE
            ]
            g = [float(y == c) for y in labels[b].flatten().tolist() if y != IGNORE]
            overlap = sum(a * t for a, t in zip(p, g))
            scores.append((2 * overlap + 1e-5) / (sum(p) + sum(g) + 1e-5))
    return 1 - sum(scores) / len(scores)


@given(seed=st.integers(0, 2**31 - 1), classes=st.integers(2, 4), ignored=st.integers(0, 5))
def test_soft_dice_equals_its_definition_and_adds_to_cross_entropy(seed, classes, ignored):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, classes, (2, 3, 4), generator=gen)
    labels.view(-1)[:ignored] = IGNORE
    got = soft_dice_loss(logits, labels)
    assert got.item() == pytest.approx(soft_dice_by_loops(logits.detach(), labels), rel=1e-10)
    plain = supervised_loss(logits, labels)
    assert supervised_loss(logits, labels, dice=True).item() == pytest.approx(
        plain.item() + got.item(), rel=1e-10
    )
    # points: [N, C] logits are one sample
    flat = logits.detach()[0].flatten(1).T
    assert soft_dice_loss(flat, labels[0].flatten()).item() == pytest.approx(
        soft_dice_by_loops(logits.detach()[:1], labels[:1]), rel=1e-10
    )


def test_soft_dice_gradients_are_its_derivative():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 2), generator=gen)
    labels[0, 0, 0] = IGNORE
    assert torch.autograd.gradcheck(lambda x: soft_dice_loss(x, labels), (logits,))
