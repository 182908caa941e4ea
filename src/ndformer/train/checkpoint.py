"""Run directories: atomic checkpoint files and ``load(run_dir)``.

A run directory holds

- ``config.json``: the model's ``ModelConfig`` (written once, atomically);
- ``model.safetensors``: the latest weights (replaced atomically);
- ``run.json``: the training config, the data's normalisation, the final metric;
- ``state.pt``: everything ``--resume`` needs (weights, optimizer, step), one file
  replaced atomically, so a crash leaves either the old or the new state, never a mix;
- ``metrics.csv``: one row per logged step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write
from ..errors import DataError
from ..models import ModelConfig, NdModel, build_model


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def save_weights(path: Path, model: NdModel) -> str:
    """``model.safetensors`` (atomic); returns the file's sha256."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"format": "pt"})
    atomic_write(path, lambda handle: handle.write(data))
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_state(path: Path, state: dict[str, Any]) -> None:
    """The resume state (atomic)."""
    atomic_write(path, lambda handle: torch.save(state, handle))


def load(run_dir: str | Path, map_location: str | torch.device = "cpu") -> NdModel:
    """The trained model of a run directory (``config.json`` + ``model.safetensors``).

    Returned in eval mode, on ``map_location``.
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    config_path, weights_path = run_dir / "config.json", run_dir / "model.safetensors"
    for required in (config_path, weights_path):
        if not required.exists():
            raise DataError(f"{run_dir} is not a run directory: {required.name} is missing")
    try:
        config = ModelConfig.from_json(config_path.read_text())
    except (ValueError, TypeError, KeyError) as error:
        raise DataError(f"{config_path}: not a valid model config ({error})") from None
    model = build_model(config)
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except Exception as error:  # safetensors raises its own error type
        raise DataError(
            f"{weights_path}: unreadable weights ({_first_line(error)}); the file is truncated"
            " or corrupt (a run with state.pt can rewrite it: ndformer train ... --resume)"
        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise DataError(
            f"{weights_path}: the weights do not match {config_path.name} ({_first_line(error)})"
        ) from None
    return model.eval()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a run directory."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise DataError(f"{run_dir} is not a run directory: run.json is missing")
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(info, dict) or not isinstance(info.get("train"), dict):
        raise DataError(f"{path}: not a run record (no 'train' settings)")
    return info


def read_state(out: Path) -> dict[str, Any]:
    """``out/state.pt``, checked: a ``DataError`` naming the file if it is unreadable."""
    path = Path(out) / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # pickle/zip errors of a truncated or corrupt file
        raise DataError(
            f"{path}: unreadable resume state ({_first_line(error)}); the file is truncated or"
            " corrupt, so this run cannot be resumed (start a new run with another --out)"
        ) from None
    if not isinstance(state, dict) or not {"step", "config", "model", "optimizer"} <= set(state):
        raise DataError(f"{path}: not an ndformer resume state")
    return state


def last_checkpoint(out: str | Path) -> int | None:
    """The step of the checkpoint in ``out`` (None if there is none or it is unreadable)."""
    try:
        return int(read_state(Path(out))["step"])
    except (DataError, OSError, ValueError):
        return None


def holds_a_run(out: Path) -> str | None:
    """Why a new run cannot start in ``out`` (it holds one already), or None."""
    if (Path(out) / "state.pt").exists():
        return f"{out} already holds a run; pass --resume to continue it or choose another --out"
    return None


def restore(out: Path, config_dict: dict[str, Any], resume: bool, model, optimizer) -> int:
    """The step a run into ``out`` starts at: 0 for a new run (refused if ``out`` already
    holds one), else the saved step, with ``model`` and ``optimizer`` loaded from
    ``state.pt`` (refused if the saved settings differ from ``config_dict``)."""
    from .config import TrainingError

    state_path = out / "state.pt"
    if not resume:
        if (problem := holds_a_run(out)) is not None:
            raise TrainingError(problem)
        return 0
    if not state_path.exists():
        raise TrainingError(f"--resume: {state_path} does not exist")
    state = read_state(out)
    # settings added since the run was saved compare equal at their defaults
    defaults = _defaults()
    missing = {k: defaults.get(k) for k in config_dict if k not in state["config"]}
    saved = {**missing, **state["config"]}
    if saved != config_dict:
        changed = sorted(k for k, v in config_dict.items() if saved.get(k) != v)
        if changed == ["steps"]:
            raise TrainingError(
                f"--resume: the run in {out} was set up for {state['config']['steps']} steps"
                f" (checkpoint at step {state['step']}), not --steps {config_dict['steps']}; its"
                " learning-rate schedule follows that count, so a resumed run keeps it. To train"
                " longer, start a new run with the larger --steps and another --out"
            )
        raise TrainingError(f"--resume: the settings differ from the saved run in {changed}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    weights = out / "model.safetensors"
    if not weights.exists() or state.get("weights_sha256") != sha256(weights):
        # A checkpoint writes the weights first, then the state: the state is the truth.
        state["weights_sha256"] = save_weights(weights, model)
    return int(state["step"])


def _defaults() -> dict[str, Any]:
    """``TrainConfig``'s scalar defaults (None for fields without one)."""
    import dataclasses

    from .config import TrainConfig

    return {f.name: None if f.default is dataclasses.MISSING else f.default
            for f in dataclasses.fields(TrainConfig)}  # fmt: skip


def save_checkpoint(
    out: Path, step: int, config_dict: dict[str, Any], model, optimizer, **extra: Any
) -> None:
    """The weights (``model.safetensors``) and the resume state (``state.pt``) after
    ``step`` steps, each replaced atomically; ``extra`` entries go into the state."""
    digest = save_weights(out / "model.safetensors", model)
    state = dict(step=step, config=config_dict, model=model.state_dict(),
                 optimizer=optimizer.state_dict(), weights_sha256=digest, **extra)  # fmt: skip
    save_state(out / "state.pt", state)
