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

import json
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write
from ..models import ModelConfig, NdModel, build_model


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def save_weights(path: Path, model: NdModel) -> None:
    """``model.safetensors`` (atomic)."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"format": "pt"})
    atomic_write(path, lambda handle: handle.write(data))


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
            raise ValueError(f"{run_dir} is not a run directory: {required.name} is missing")
    model = build_model(ModelConfig.from_json(config_path.read_text()))
    state = load_file(str(weights_path), device=str(map_location))
    model.load_state_dict(state)
    return model.eval()


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a run directory."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise ValueError(f"{run_dir} is not a run directory: run.json is missing")
    return json.loads(path.read_text())


def restore(out: Path, config_dict: dict[str, Any], resume: bool, model, optimizer) -> int:
    """The step a run into ``out`` starts at: 0 for a new run (refused if ``out`` already
    holds one), else the saved step, with ``model`` and ``optimizer`` loaded from
    ``state.pt`` (refused if the saved settings differ from ``config_dict``)."""
    from .config import TrainingError

    state_path = out / "state.pt"
    if not resume:
        if state_path.exists():
            raise TrainingError(
                f"{out} already holds a run; pass --resume to continue it or choose another --out"
            )
        return 0
    if not state_path.exists():
        raise TrainingError(f"--resume: {state_path} does not exist")
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    if state["config"] != config_dict:
        changed = sorted(k for k, v in config_dict.items() if state["config"].get(k) != v)
        raise TrainingError(f"--resume: the settings differ from the saved run in {changed}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def save_checkpoint(out: Path, step: int, config_dict: dict[str, Any], model, optimizer) -> None:
    """The weights (``model.safetensors``) and the resume state (``state.pt``) after
    ``step`` steps, each replaced atomically."""
    save_weights(out / "model.safetensors", model)
    state = dict(step=step, config=config_dict, model=model.state_dict(),
                 optimizer=optimizer.state_dict())  # fmt: skip
    save_state(out / "state.pt", state)
