"""Training recipes the arena applies to every entry, and ablations of their pieces.

A recipe is a set of pieces, each one training setting or model override with its value
"on" and "off". ``ndformer arena --recipe volt`` trains every entry with all of Volt's
pieces on; ``--ablate lovasz,ema`` adds, for the first pattern, one entry per named piece
with only that piece off, and one with every piece off (the plain recipe), so the report
shows what each piece is worth at the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class Piece:
    """One switch of a recipe: ``key`` of the train settings (``where="train"``) or of the
    model overrides (``where="overrides"``), set to ``on`` or ``off``."""

    where: str
    key: str
    on: Any
    off: Any


#: Volt's recipe (arXiv 2604.19609) as far as ndformer has it: the loss (cross-entropy
#: with label smoothing 0.1 + Lovász-softmax), OneCycle, an EMA of the weights, scene
#: mixing with probability 0.85, instance augmentation (each object moved or dropped
#: with probability 0.5, colour dropout), and attention with qk-norm and RoPE base 100.
RECIPES: dict[str, dict[str, Piece]] = {
    "volt": {
        "label_smoothing": Piece("train", "label_smoothing", 0.1, 0.0),
        "lovasz": Piece("train", "lovasz", True, False),
        "onecycle": Piece("train", "schedule", "onecycle", "cosine"),
        "ema": Piece("train", "ema", 0.999, 0.0),
        "mix": Piece("train", "mix", 0.85, 0.0),
        "instances": Piece("train", "instance_aug", 0.5, 0.0),
        "qk_norm": Piece("overrides", "qk_norm", True, False),
        "rope_base": Piece("overrides", "rope_base", 100.0, 10000.0),
    },
    #: SegFormer3D's loss: cross-entropy + soft Dice (MONAI's DiceCE).
    "segformer3d": {
        "dice": Piece("train", "dice", True, False),
    },
}


def check_recipe(recipe: str | None, ablate: list[str]) -> None:
    """``UsageError`` for an unknown recipe or piece, or ablations without a recipe."""
    if recipe is not None and recipe not in RECIPES:
        raise UsageError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if ablate and recipe is None:
        raise UsageError("--ablate switches off pieces of a recipe: give --recipe too")
    pieces = RECIPES.get(recipe, {})
    unknown = [name for name in ablate if name not in pieces]
    if unknown:
        raise UsageError(
            f"--ablate: {', '.join(unknown)} not in the {recipe} recipe; its pieces:"
            f" {', '.join(pieces)}"
        )
    if len(set(ablate)) != len(ablate):
        raise UsageError(f"--ablate: each piece once, got {ablate}")


def check_model(recipe: str | None, model: str) -> None:
    """``UsageError`` if ``model`` has no setting a piece of ``recipe`` overrides."""
    import dataclasses

    from ..models.config import CONFIGS, MODELS

    if recipe is None or model not in MODELS:
        return  # an unknown model is refused where it is built, with the list of models
    fields = {f.name for f in dataclasses.fields(CONFIGS[MODELS[model]["arch"]])}
    missing = [p.key for p in RECIPES[recipe].values() if p.where == "overrides"
               and p.key not in fields]  # fmt: skip
    if missing:
        raise UsageError(
            f"--recipe {recipe} sets {', '.join(missing)}, which {model} does not have;"
            " use it with a volt model (--model volt-tiny)"
        )


def settings(recipe: str | None, off: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``{"train": {...}, "overrides": {...}}`` of ``recipe`` with the pieces in ``off``
    switched off (empty dicts without a recipe)."""
    out: dict[str, dict[str, Any]] = {"train": {}, "overrides": {}}
    for name, piece in RECIPES.get(recipe, {}).items():
        out[piece.where][piece.key] = piece.off if name in off else piece.on
    return out


def ablations(recipe: str, ablate: list[str], first: str) -> list[tuple[str, str, dict]]:
    """The extra arena entries: ``first`` with each piece in ``ablate`` off, then with
    every piece off; as (label, pattern spec, extra) like ``ArenaConfig.entries``."""
    every = tuple(RECIPES[recipe])
    entries = [(f"{first} - {name}", first, dict(recipe_off=(name,))) for name in ablate]
    return [*entries, (f"{first} (plain)", first, dict(recipe_off=every))]
