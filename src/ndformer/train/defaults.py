"""Training defaults chosen from the data: model size, patch, pattern, steps, batch.

``choose_defaults`` fills every setting the user left open from the data set (sample
count, spatial size, dimensionality) and says why, so that a first run on one's own data
is sized to it instead of to one fixed recipe. The rules, in order:

- **model**: ``vit-tiny`` for grids, ``volt-tiny`` for point clouds. Unless the user
  named the model, its size follows the training set: under
  ``SMALL_DATA`` samples, 4 blocks of width 128 (2 heads) with stochastic depth 0.1 — a
  12-block ViT memorises a few thousand samples long before it generalises —; under
  ``MEDIUM_DATA``, 6 blocks of width 192; beyond, the registered 12 blocks.
- **patch** (user data; tasks keep their own): the smallest patch giving at most
  ``TOKEN_BUDGET[ndim]`` tokens per sample (``tasks.base.suggest_patch``, which the
  loaders apply). Patches the size does not divide are zero-padded.
- **pattern**: full attention while its pairs cost no more than the block's dense
  layers — ``4·N·dim`` attention FLOPs per token against ``24·dim²``, that is
  ``N <= 6·dim`` tokens —, else ``neighborhood(k)`` (``LOCAL_KERNEL``), whose
  forward+backward is 30x cheaper than full attention at 4096 tokens
  (docs/bench/training, ``ndformer bench --backward``).
- **steps**: a number of epochs (``epochs_for``: 120 under ``SMALL_DATA`` samples, 30 under
  ``MEDIUM_DATA``, 10 beyond) times the steps per epoch.
- **batch**: 64 samples, 4 scenes for point clouds, never more than the training set.

Every choice the user made is kept and reported as given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .._checks import check_int
from ..models import MODELS
from ..tasks.base import TOKEN_BUDGET, tokens_for
from .data import Data, PointTaskData, num_samples

SMALL_DATA = 5_000
MEDIUM_DATA = 50_000
#: The neighborhood size beyond the full-attention threshold, per number of spatial axes.
LOCAL_KERNEL = {1: 15, 2: 7, 3: 5, 4: 3}
#: Full attention while tokens <= FULL_PER_DIM * dim (its pairs cost <= the dense layers).
FULL_PER_DIM = 6
#: Overrides of the registered model for small and medium training sets.
SIZES = {
    "small": dict(depth=4, dim=128, heads=2, drop_path=0.1),
    "medium": dict(depth=6),
}


@dataclass
class Choice:
    """One setting of a run: its value, why, and whether the user gave it."""

    setting: str
    value: Any
    reason: str
    given: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def epochs_for(train_samples: int) -> int:
    """Default epochs for a training set of ``train_samples`` samples."""
    if train_samples < SMALL_DATA:
        return 120
    return 30 if train_samples < MEDIUM_DATA else 10


def size_for(train_samples: int) -> str:
    """``small``, ``medium`` or ``registered``: the model size for the training set."""
    if train_samples < SMALL_DATA:
        return "small"
    return "medium" if train_samples < MEDIUM_DATA else "registered"


def choose_defaults(
    data: Data,
    *,
    model: str | None = None,
    patch: int | None = None,
    pattern: str | list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    user_data: bool = False,
) -> tuple[dict[str, Any], list[Choice]]:
    """The ``TrainConfig`` fields (model, patch, pattern, overrides, steps, batch_size)
    for ``data`` with the user's settings kept, and the list of choices with reasons.

    ``user_data``: the data came from files (the patch rule applies; tasks keep their
    suggested patch). ``steps`` and ``epochs`` exclude each other.
    """
    if steps is not None and epochs is not None:
        raise ValueError("give --steps or --epochs, not both")
    for name, value in (("--batch-size", batch_size), ("--steps", steps), ("--epochs", epochs),
                        ("--patch", patch)):  # fmt: skip
        if value is not None:
            check_int(name, value, 1)
    points = isinstance(data, PointTaskData)
    n = num_samples(data, "train")
    choices: list[Choice] = []
    overrides = dict(overrides or {})

    if batch_size is not None:
        choices.append(Choice("batch", batch_size, "given", True))
    else:
        batch_size = min(4 if points else 64, n)
        what = "scenes (point clouds)" if points else "samples"
        choices.append(Choice("batch", batch_size, f"{batch_size} {what} per step"))

    if model is not None:
        choices.append(Choice("model", model, "given", True))
    else:
        model = "volt-tiny" if points else "vit-tiny"
        choices.append(Choice("model", model, "point clouds" if points else "grids"))
        size = size_for(n)
        sized = {k: v for k, v in SIZES.get(size, {}).items() if k not in overrides}
        if sized and not points:
            overrides = {**sized, **overrides}
            limit = SMALL_DATA if size == "small" else MEDIUM_DATA
            choices.append(Choice("size", sized, f"fewer than {limit:,} training samples"))
    registered = MODELS.get(model, {})

    if not points:
        spatial = tuple(data.spatial)
        if patch is not None:
            choices.append(Choice("patch", patch, "given", True))
        else:
            patch = data.patch
            budget = TOKEN_BUDGET.get(len(spatial), 256)
            grid = "x".join(map(str, spatial))
            reason = f"the smallest with <= {budget} tokens on {grid}" if user_data else (
                f"the task's ({data.name})")  # fmt: skip
            choices.append(Choice("patch", patch, reason))
        tokens = tokens_for(spatial, patch)
        choices.append(Choice("tokens", tokens, "per sample"))
        if pattern is not None or "pattern" in overrides:
            choices.append(Choice("pattern", pattern or overrides["pattern"], "given", True))
        elif registered.get("pattern", "full") != "full":
            choices.append(Choice("pattern", registered["pattern"], f"{model}'s own"))
        elif registered.get("arch") == "segformer":
            reason = "segformer's efficient self-attention (keys reduced by its sr_ratios)"
            choices.append(Choice("pattern", "full", reason))
        else:
            dim = overrides.get("dim", registered.get("dim", 192))
            limit = FULL_PER_DIM * dim
            if tokens <= limit:
                pattern = "full"
                reason = f"{tokens} tokens <= {FULL_PER_DIM} x width {dim}: full attention is cheap"
            else:
                pattern = f"neighborhood({LOCAL_KERNEL.get(len(spatial), 3)})"
                reason = (f"{tokens} tokens > {FULL_PER_DIM} x width {dim}: full attention"
                          " would cost more than the dense layers")  # fmt: skip
            choices.append(Choice("pattern", pattern, reason))

    per_epoch = max(1, n // batch_size)
    if steps is not None:
        choices.append(Choice("steps", steps, f"given ({steps / per_epoch:.1f} epochs)", True))
    else:
        given = epochs is not None
        epochs = epochs if given else epochs_for(n)
        steps = max(1, epochs * per_epoch)
        why = "given" if given else f"{n:,} training samples"
        choices.append(Choice("steps", steps, f"{epochs} epochs of {per_epoch} steps ({why})",
                              given))  # fmt: skip
    fields = dict(model=model, patch=patch, pattern=pattern, overrides=overrides, steps=steps,
                  batch_size=batch_size)  # fmt: skip
    return fields, choices
