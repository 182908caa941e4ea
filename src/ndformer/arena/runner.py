"""``ndformer arena``: the same model trained with every pattern under the same budget."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import run_json_worker

#: The default arena: a long-range task where local patterns are at a disadvantage,
#: a small transformer, and a budget that fits 10 minutes on 2 CPU cores.
DEFAULT_TASK = "pathfinder2d-16"
DEFAULT_PATTERNS = ["full", "window(4)", "neighborhood(3)", "neighborhood(5)"]
DEFAULT_MODEL = "vit-tiny"
DEFAULT_OVERRIDES: dict[str, Any] = dict(depth=4, dim=64, heads=4, patch=2)
DEFAULT_STEPS = 1200
#: The default wall-clock budget of the whole arena (training time, split evenly).
DEFAULT_MINUTES = 7.5


@dataclass
class ArenaConfig:
    """One arena: ``patterns`` x ``seeds`` training runs of ``model`` on ``task``.

    The budget is ``minutes`` of training for the whole arena, split evenly; each run
    converts its share into steps by timing a few steps first, so faster patterns
    train for more steps. With ``minutes=None`` every run trains ``steps`` steps.
    """

    task: str | None = DEFAULT_TASK
    data: str | None = None
    patterns: list[str] = field(default_factory=lambda: list(DEFAULT_PATTERNS))
    #: Extra entries: full attention with ToMe merging r tokens per block, one per r.
    token_merging: list[int] = field(default_factory=list)
    #: Extra entries: full attention with EViT fusion at each keep rate.
    keep_rates: list[float] = field(default_factory=list)
    model: str = DEFAULT_MODEL
    overrides: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_OVERRIDES))
    steps: int = DEFAULT_STEPS
    minutes: float | None = DEFAULT_MINUTES
    seeds: int = 1
    batch_size: int = 64
    lr: float = 2e-3
    out: Path = Path("arena-results")

    def __post_init__(self) -> None:
        from ..patterns import pattern

        if not self.patterns:
            raise ValueError("arena needs at least one pattern")
        for spec in self.patterns:
            pattern(spec)
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in self.token_merging):
            raise ValueError(f"token_merging values must be ints >= 1, got {self.token_merging}")
        if any(isinstance(k, bool) or not 0 < k < 1 for k in self.keep_rates):
            raise ValueError(f"keep_rates must be in (0, 1), got {self.keep_rates}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        self.out = Path(self.out)

    def entries(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(label, pattern spec, extra model overrides) of every arena entry."""
        plain = [(spec, spec, {}) for spec in self.patterns]
        merging = [(f"full + tome({r})", "full", {"token_merging": r}) for r in self.token_merging]
        fusion = [(f"full + evit({k})", "full", {"keep_rate": k}) for k in self.keep_rates]
        return plain + merging + fusion

    def train_config(self, spec: str, seed: int, extra: dict | None = None) -> dict[str, Any]:
        return dict(
            task=self.task,
            data=self.data,
            model=self.model,
            pattern=spec,
            overrides={**self.overrides, **(extra or {})},
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed,
            eval_samples=500,
        )


def _run_worker(request: dict[str, Any]) -> dict[str, Any]:
    try:
        return run_json_worker("ndformer.arena.measure", request)
    except RuntimeError as error:
        return dict(error=str(error))


def run_arena(
    config: ArenaConfig, on_entry: Callable[[int, int, str, dict], None] | None = None
) -> list[dict[str, Any]]:
    """Train and measure every (pattern, seed); returns one row per run.

    Each run happens in a fresh worker process (its own peak memory; a crash in one
    run becomes an ``error`` row, not a lost arena). Run directories go to
    ``out/runs/<pattern>-seed<seed>``. Ctrl-C stops and returns the finished rows.
    """
    from ..tasks import load_task

    if config.task is not None:  # generate (and cache) the task once, before the workers
        load_task(config.task, seed=0, progress=True)
    entries = [(e, seed) for e in config.entries() for seed in range(config.seeds)]
    budget = None if config.minutes is None else 60.0 * config.minutes / len(entries)
    rows: list[dict[str, Any]] = []
    try:
        for number, ((label, spec, extra), seed) in enumerate(entries):
            if on_entry is not None:
                on_entry(number, len(entries), label, {})
            run_dir = config.out / "runs" / f"{_slug(label)}-seed{seed}"
            if run_dir.exists():
                shutil.rmtree(run_dir)
            started = time.perf_counter()
            result = _run_worker(
                dict(
                    config=config.train_config(spec, seed, extra),
                    out=str(run_dir),
                    budget_seconds=budget,
                )
            )
            row = dict(pattern=label, seed=seed, seconds=time.perf_counter() - started, **result)
            rows.append(row)
            if on_entry is not None:
                on_entry(number + 1, len(entries), label, row)
    except KeyboardInterrupt:
        pass
    return rows


def _slug(spec: str) -> str:
    keep = [c if c.isalnum() else "-" for c in spec]
    return "".join(keep).strip("-").replace("--", "-")


def config_dict(config: ArenaConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["out"] = str(config.out)
    return data
