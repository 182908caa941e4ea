"""The arena: train one model with several attention patterns under one budget and compare."""

from .runner import (
    DEFAULT_MODEL,
    DEFAULT_OVERRIDES,
    DEFAULT_PATTERNS,
    DEFAULT_STEPS,
    DEFAULT_TASK,
    ArenaConfig,
    config_dict,
    run_arena,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_OVERRIDES",
    "DEFAULT_PATTERNS",
    "DEFAULT_STEPS",
    "DEFAULT_TASK",
    "ArenaConfig",
    "config_dict",
    "run_arena",
]
