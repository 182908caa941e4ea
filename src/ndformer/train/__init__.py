"""Training, evaluation and run directories: ``fit``, ``evaluate_model``, ``load``."""

from .checkpoint import atomic_write, load, read_run
from .config import TrainConfig, TrainingError
from .data import build_for, resolve_data
from .evaluate import evaluate_model, predict
from .fit import RunResult, fit
from .metrics import Score, accuracy_score, dice_score, miou_score
from .segment import segment_file, segment_points

__all__ = [
    "RunResult",
    "Score",
    "TrainConfig",
    "TrainingError",
    "accuracy_score",
    "atomic_write",
    "build_for",
    "dice_score",
    "evaluate_model",
    "fit",
    "load",
    "miou_score",
    "predict",
    "read_run",
    "resolve_data",
    "segment_file",
    "segment_points",
]
