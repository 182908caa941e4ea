"""``ndformer arena``: the same model trained with every pattern under the same budget.

The budget is deterministic by default: every entry trains on the same number of samples
(``steps`` x ``batch_size``), or with ``flops`` on the same number of training FLOPs
counted from the model, so accuracy depends on (data, model, pattern, seed) alone. A
wall-clock budget (``minutes``) converts each entry's share into steps from an
interleaved measurement of the entries' step times (so those step counts depend on the
machine). After training, every entry's cost is measured apart from its training, in
interleaved rounds (``arena.cost``), with the machine's contention.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._checks import check_int
from .._io import exclusive_dir, run_json_worker
from ..errors import DataError, UsageError
from .jobs import default_jobs, run_parallel, thread_env
from .recipes import ablations, check_model, check_recipe
from .recipes import settings as recipe_settings

#: The default arena: a long-range task where local patterns are at a disadvantage, a
#: small transformer, and 57,600 training samples per entry (about 7 minutes on 2 cores).
DEFAULT_TASK = "pathfinder2d-16"
DEFAULT_PATTERNS = ["full", "window(4)", "neighborhood(3)", "neighborhood(5)"]
DEFAULT_MODEL = "vit-tiny"
DEFAULT_OVERRIDES: dict[str, Any] = dict(depth=4, dim=64, heads=4, patch=2)
#: The default budget: this many steps of ``batch_size`` samples for every entry.
DEFAULT_STEPS = 900
#: Rounds of the interleaved cost measurement after training (and for ``minutes``).
COST_ROUNDS = 5
#: Evaluation and checkpoints on top of the steps, when converting minutes into steps.
OVERHEAD = 1.1
BUDGETS = ("samples", "flops", "minutes")


@dataclass
class ArenaConfig:
    """One arena: ``patterns`` x ``seeds`` training runs of ``model`` on ``task``.

    ``budget`` is ``"samples"`` (every run trains ``steps`` steps of ``batch_size``),
    ``"flops"`` (every run trains ``flops`` training FLOPs: as many steps as fit) or
    ``"minutes"`` (``minutes`` of training for the whole arena, split evenly, converted
    into steps from measured step times).
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
    #: Extra entries: other models at their registered sizes, with their own attention
    #: (e.g. ``segformer3d-tiny``, ``conv-tiny``; ``voxconv-tiny`` for point scenes),
    #: trained under the same budget and recipe (its model settings where they apply).
    models: list[str] = field(default_factory=list)
    budget: str = "samples"
    steps: int = DEFAULT_STEPS
    flops: float | None = None
    minutes: float | None = None
    seeds: int = 1
    batch_size: int = 64
    lr: float = 2e-3
    #: Validate every this many steps (0: ten times per run); the test split is scored
    #: once at the end either way.
    eval_every: int = 0
    #: A training recipe for every entry (``arena.recipes``: "volt"), and pieces of it to
    #: ablate (extra entries of the first pattern with one piece off, and all off).
    recipe: str | None = None
    ablate: list[str] = field(default_factory=list)
    #: Torch threads of every training worker. Fixed (not the machine's core count), so
    #: an entry computes the same floats on any machine and with any ``jobs``.
    threads: int = 1
    #: Entries that train at a time, each in its own process (0: as many as the cores
    #: hold at ``threads`` each). Changes the wall time only.
    jobs: int = 0
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
        for name in ("seeds", "steps", "batch_size", "threads"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("eval_every", self.eval_every, minimum=0)
        check_int("jobs", self.jobs, minimum=0)
        check_recipe(self.recipe, self.ablate)
        check_model(self.recipe, self.model)
        from ..models.config import MODELS

        unknown = [name for name in self.models if name not in MODELS]
        if unknown:
            raise UsageError(
                f"--models: unknown {', '.join(unknown)}; available: {', '.join(sorted(MODELS))}"
            )
        if self.budget not in BUDGETS:
            raise UsageError(f"--budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        if self.budget == "minutes" and not (self.minutes is not None and 0 < self.minutes < 1e6):
            raise UsageError(f"minutes must be > 0, got {self.minutes}")
        if self.budget == "flops" and not (self.flops is not None and 0 < self.flops < 1e30):
            raise UsageError(f"the flops budget must be > 0, got {self.flops}")
        self.out = Path(self.out)

    def entries(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(label, pattern spec, extra model overrides) of every arena entry."""
        plain = [(spec, spec, {}) for spec in self.patterns]
        merging = [(f"full + tome({r})", "full", {"token_merging": r}) for r in self.token_merging]
        fusion = [(f"full + evit({k})", "full", {"keep_rate": k}) for k in self.keep_rates]
        ablated = ablations(self.recipe, self.ablate, self.patterns[0]) if self.ablate else []
        others = [(name, "", {"model": name}) for name in self.models]
        return plain + merging + fusion + ablated + others

    def jobs_for(self, entries: int) -> int:
        """Entries that train at a time when ``entries`` are to train."""
        return self.jobs or default_jobs(self.threads, entries)

    def train_config(self, spec: str, seed: int, extra: dict | None = None) -> dict[str, Any]:
        """The ``TrainConfig`` dict of one entry: ``extra`` holds model overrides, or
        ``recipe_off`` (the recipe's pieces switched off for this entry)."""
        extra = dict(extra or {})
        recipe = recipe_settings(self.recipe, extra.pop("recipe_off", ()))
        model, overrides = self.model, {**self.overrides, **recipe["overrides"], **extra}
        if "model" in extra:  # another model: its own sizes and attention
            from ..models.config import has_field

            model = extra["model"]
            overrides = {k: v for k, v in recipe["overrides"].items() if has_field(model, k)}
        return dict(
            **recipe["train"],
            task=self.task,
            data=self.data,
            model=model,
            pattern=spec or None,
            overrides=overrides,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed,
            eval_every=self.eval_every,
            eval_samples=500,
        )


def _run_worker(module: str, request: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """``module``'s answer to ``request`` (``{"error": ...}`` if it failed), run on
    ``threads`` torch threads (default: the machine's)."""
    env = None if threads is None else thread_env(threads)
    try:
        return run_json_worker(module, request, env=env)
    except RuntimeError as error:
        return dict(error=str(error))


#: The record of a finished entry inside its run directory (``--resume`` reuses it).
ENTRY_FILE = "entry.json"


def run_arena(
    config: ArenaConfig,
    on_entry: Callable[[int, int, str, dict], None] | None = None,
    resume: bool = False,
    on_plan: Callable[[list[str]], None] | None = None,
    dry_run: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train and measure every (pattern, seed); returns (one row per run, the arena's
    notes: the budget per entry and the contention during the cost measurement).

    Each run happens in a fresh worker process (its own peak memory; a crash in one
    run becomes an ``error`` row, not a lost arena). Run directories go to
    ``out/runs/<pattern>-seed<seed>``, each with ``entry.json`` when it finished;
    ``resume`` keeps those (same settings required) and trains only the others. Ctrl-C
    stops and returns the finished rows.

    Before training, every entry that will train is planned (``arena.plan``: a few
    timed steps, the peak memory; an entry that would not fit is refused with a
    ``UsageError``); ``on_plan`` gets the plan's lines and ``notes["plan"]`` its
    totals. ``dry_run`` returns after the plan, with no rows and nothing written.
    """
    from ..tasks import load_task

    if config.task is not None:  # generate (and cache) the task once, before the workers
        load_task(config.task, seed=0, progress=True)
    entries = [(e, seed) for e in config.entries() for seed in range(config.seeds)]
    rows: list[dict[str, Any]] = []
    notes: dict[str, Any] = dict(budget=config.budget)
    started = time.perf_counter()
    with exclusive_dir(config.out), contextlib.suppress(KeyboardInterrupt):
        saved = _check_resume(config, resume)
        steps = saved.get("entry_steps") if resume else None
        if steps is None or len(steps) != len(entries):
            steps = _steps(config, entries, notes)
        if on_plan is not None or dry_run:
            _plan(config, entries, steps, resume, notes, on_plan)
        if dry_run:
            return rows, notes
        _record(config, dict(saved, **config_dict(config), entry_steps=steps))
        notes["jobs"] = _train_entries(config, entries, steps, resume, rows, on_entry)
        _measure_costs(rows, notes)
    notes["seconds"] = time.perf_counter() - started
    return rows, notes


def _train_entries(config: ArenaConfig, entries, steps: list[int], resume: bool,
                   rows: list[dict[str, Any]],
                   on_entry: Callable[[int, int, str, dict], None] | None) -> int:  # fmt: skip
    """Train every entry not finished yet, ``config.jobs`` at a time, each in its own
    worker on ``config.threads`` threads; append the rows to ``rows`` in entry order
    (the finished ones even when interrupted). Returns how many trained at a time."""
    total = len(entries)
    runs = []
    for number, ((label, spec, extra), seed) in enumerate(entries):
        run_dir = config.out / "runs" / f"{_slug(label)}-seed{seed}"
        train = dict(config.train_config(spec, seed, extra), steps=steps[number])
        runs.append((label, seed, run_dir, train))
    done: dict[int, dict[str, Any]] = {}
    for number, (label, _, run_dir, train) in enumerate(runs):
        row = _finished(run_dir, train) if resume else None
        if row is not None:
            done[number] = row
            if on_entry is not None:
                on_entry(number, total, label, {})
                on_entry(number + 1, total, label, row)
    todo = [number for number in range(total) if number not in done]

    def train(index: int) -> dict[str, Any]:
        label, seed, run_dir, settings = runs[todo[index]]
        if run_dir.exists():
            shutil.rmtree(run_dir)
        started = time.perf_counter()
        request = dict(config=settings, out=str(run_dir))
        result = _run_worker("ndformer.arena.measure", request, threads=config.threads)
        row = dict(pattern=label, seed=seed, seconds=time.perf_counter() - started,
                   run=str(run_dir), config=settings, **result)  # fmt: skip
        if "error" not in row:
            _write_entry(run_dir, row)
        return row

    def on_start(index: int) -> None:
        if on_entry is not None:
            on_entry(todo[index], total, runs[todo[index]][0], {})

    jobs = config.jobs_for(len(todo))
    try:
        for index, row in run_parallel(train, len(todo), jobs, on_start):
            number = todo[index]
            done[number] = row
            if on_entry is not None:
                on_entry(number + 1, total, runs[number][0], row)
    finally:
        rows.extend(done[number] for number in sorted(done))
    return jobs


def _plan(config: ArenaConfig, entries, steps, resume: bool, notes: dict[str, Any],
          on_plan: Callable[[list[str]], None] | None) -> None:  # fmt: skip
    """Plan the entries that will train (see ``run_arena``)."""
    from .plan import arena_seconds, peak_at_once, plan_lines

    todo = []
    for number, ((label, spec, extra), seed) in enumerate(entries):
        train = dict(config.train_config(spec, seed, extra), steps=steps[number])
        run_dir = config.out / "runs" / f"{_slug(label)}-seed{seed}"
        if not (resume and _finished(run_dir, train)):
            todo.append((f"{label} seed {seed}" if config.seeds > 1 else label, train))
    if not todo:
        return
    planned = _run_worker("ndformer.arena.plan", dict(configs=[t for _, t in todo]),
                          threads=config.threads)  # fmt: skip
    if "refused" in planned:
        raise UsageError(f"arena entry {todo[planned['entry']][0]}: {planned['refused']}")
    if "error" in planned:
        notes["plan_error"] = planned["error"]
        if on_plan is not None:
            on_plan([f"plan: could not measure the entries ({planned['error']})"])
        return
    plans = planned["plans"]
    jobs = config.jobs_for(len(todo))
    notes["plan"] = dict(seconds=arena_seconds(plans, COST_ROUNDS, jobs),
                         peak_bytes=peak_at_once(plans, jobs), jobs=jobs,
                         threads=config.threads)  # fmt: skip
    if on_plan is not None:
        labels = [label for label, _ in todo]
        steps = [t["steps"] for _, t in todo]
        on_plan(plan_lines(labels, steps, plans, COST_ROUNDS, jobs, config.threads))


def _check_resume(config: ArenaConfig, resume: bool) -> dict[str, Any]:
    """The settings ``out/arena.json`` recorded (with every entry's steps, ``entry_steps``);
    ``resume``
    requires the same ones. Empty for a new arena."""
    path = config.out / "arena.json"
    if not resume or not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"--resume: {path} is unreadable ({error})") from None
    settings = json.loads(json.dumps(config_dict(config)))
    changed = sorted(k for k in settings
                     if k not in ("out", "jobs") and saved.get(k) != settings[k])  # fmt: skip
    if changed:
        raise DataError(f"--resume: the settings differ from the arena in {config.out} in"
                        f" {changed}")  # fmt: skip
    return saved


def _record(config: ArenaConfig, settings: dict[str, Any]) -> None:
    from .._io import atomic_write

    text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
    atomic_write(config.out / "arena.json", lambda handle: handle.write(text.encode()))


def _finished(run_dir: Path, train: dict[str, Any]) -> dict[str, Any] | None:
    """The saved row of a finished entry with these settings, else None."""
    path = run_dir / ENTRY_FILE
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return row if row.get("config") == train else None


def _write_entry(run_dir: Path, row: dict[str, Any]) -> None:
    from .._io import atomic_write

    text = json.dumps(row, indent=2, sort_keys=True) + "\n"
    atomic_write(run_dir / ENTRY_FILE, lambda handle: handle.write(text.encode()))


def _steps(config: ArenaConfig, entries, notes: dict[str, Any]) -> list[int]:
    """Training steps of every entry under the budget (see ``ArenaConfig``)."""
    configs = [config.train_config(spec, seed, extra) for (_, spec, extra), seed in entries]
    if config.budget == "samples":
        notes["samples"] = config.steps * config.batch_size
        return [config.steps] * len(entries)
    if config.budget == "flops":
        from ..train import TrainConfig, resolve_data
        from .measure import training_flops_per_step

        data = resolve_data(TrainConfig(**configs[0]))  # every entry trains on the same data
        per_step = [training_flops_per_step(c, data) for c in configs]
        notes.update(flops=config.flops, flops_per_step=per_step)
        steps = [max(1, int(config.flops // f)) for f in per_step]
        return steps
    share = 60.0 * config.minutes / len(entries)
    measured = _run_worker("ndformer.arena.cost", dict(
        entries=[dict(config=c) for c in configs], rounds=3))  # fmt: skip
    if "error" in measured:
        raise DataError(f"measuring the entries' step times failed: {measured['error']}")
    notes["calibration"] = measured["contention"]
    seconds = [e["train_step_ms"] / 1e3 * OVERHEAD for e in measured["entries"]]
    return [max(10, int(share / s)) for s in seconds]


def _measure_costs(rows: list[dict[str, Any]], notes: dict[str, Any]) -> None:
    """Time every finished entry in interleaved rounds; merge the figures into its row."""
    done = [r for r in rows if "error" not in r and "run" in r]
    if not done:
        return
    request = dict(entries=[dict(config=r["config"], run=r["run"]) for r in done],
                   rounds=COST_ROUNDS)  # fmt: skip
    measured = _run_worker("ndformer.arena.cost", request)
    if "error" in measured:
        notes["cost_error"] = measured["error"]
        return
    for row, figures in zip(done, measured["entries"], strict=True):
        row.update(figures)
    notes["contention"] = measured["contention"]


def _slug(spec: str) -> str:
    keep = [c if c.isalnum() else "-" for c in spec]
    return "".join(keep).strip("-").replace("--", "-")


def config_dict(config: ArenaConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["out"] = str(config.out)
    return data
