"""``fit``: one training run into a run directory, resumable, with progress and metrics."""

from __future__ import annotations

import contextlib
import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import check_output_dir, exclusive_dir
from ..models import NdModel
from ..tasks.points import PointTaskData
from .average import WeightAverage
from .checkpoint import (
    load,
    read_run,
    read_state,
    restore,
    save_checkpoint,
    save_weights,
    write_json,
)
from .config import METRIC_COLUMNS, TrainConfig, TrainingError
from .data import (
    Data,
    batch_indices,
    build_for,
    check_model_fits,
    make_batch,
    num_samples,
    resolve_data,
    step_seed,
)
from .distributed import World, barrier, decide, main_first, share, world, wrap
from .evaluate import evaluate_model
from .metrics import Score
from .plan import Plan, peak_resident_bytes
from .step import lr_at, param_groups, train_step


@dataclass
class RunResult:
    """What ``fit`` returns: the run directory, the model, its test score and its speed."""

    out: Path
    model: NdModel
    score: Score | None
    samples_per_s: float
    steps: int  # steps trained (fewer than configured after an early stop)
    best_step: int | None = None  # with patience: the step of the weights it ended with


class Reporter:
    """Progress bar, ``metrics.csv`` and (optionally) TensorBoard for one run."""

    def __init__(self, out: Path, config: TrainConfig, start: int, progress: bool, title: str):
        self.path = out / "metrics.csv"
        rows = []
        if start and self.path.exists():  # resume: keep the rows up to the checkpoint
            with self.path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= start]
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.writer = None
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise TrainingError("--tensorboard needs the tensorboard package") from error
            self.writer = SummaryWriter(str(out / "tensorboard"))
        self.bar = self.task = None
        self.stack = contextlib.ExitStack()
        if progress:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = self.stack.enter_context(
                Progress(
                    TextColumn("{task.description}", markup=False),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}", markup=False),
                    TimeRemainingColumn(),
                    transient=False,
                )
            )
            self.task = self.bar.add_task(title, total=config.steps, completed=start, info="")

    def log(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, METRIC_COLUMNS).writerow(row)
        if self.writer is not None:
            for key in ("loss", "train_metric", "lr", "val_metric"):
                if row.get(key) not in (None, ""):
                    self.writer.add_scalar(key, float(row[key]), int(row["step"]))

    def advance(self, step: int, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        self.stack.close()
        if self.writer is not None:
            self.writer.close()


def _teacher(config: TrainConfig, data: Data, out: Path, progress: bool) -> NdModel | None:
    if config.teacher is None:
        return None
    if config.teacher != "conv":
        teacher = load(config.teacher)
        check_model_fits(teacher, data)
        return teacher
    teacher_dir = out / "teacher"
    done = (teacher_dir / "run.json").exists() and read_run(teacher_dir).get("status") == "done"
    if done:
        return load(teacher_dir)
    teacher_config = TrainConfig(
        task=config.task,
        data=config.data,
        model=getattr(data, "teacher_model", "conv-tiny"),
        patch=max(1, (config.patch or data.patch) // 2),
        steps=config.teacher_steps or config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        augment=config.augment,
        amp=config.amp,
    )
    resume = (teacher_dir / "state.pt").exists()
    return fit(teacher_config, teacher_dir, data=data, resume=resume, progress=progress).model


def data_summary(data: Data) -> dict[str, Any]:
    """What ``run.json`` records of the data: name, task kind, classes, normalisation."""
    info = dict(
        name=data.name, kind=data.kind, num_classes=data.num_classes, class_names=data.class_names
    )
    if isinstance(data, PointTaskData):
        info.update(points=True, voxel_size=data.voxel_size, in_chans=data.in_chans)
    else:
        info.update(spatial=list(data.spatial), mean=data.mean.flatten().tolist(),
                    std=data.std.flatten().tolist())  # fmt: skip
    return info


class _Meter:
    """Loss, training metric and samples/s since the last log."""

    def __init__(self) -> None:
        self.seen, self.seconds = 0, 0.0
        self.reset()

    def reset(self) -> None:
        self.loss = self.metric = 0.0
        self.steps = 0

    def add(self, loss: float, metric: float, samples: int, seconds: float) -> None:
        self.loss, self.metric, self.steps = self.loss + loss, self.metric + metric, self.steps + 1
        self.seen, self.seconds = self.seen + samples, self.seconds + seconds

    @property
    def rate(self) -> float:
        return self.seen / max(self.seconds, 1e-9)

    def row(self, step: int, lr: float, val: Score) -> dict[str, Any]:
        return dict(step=step, lr=f"{lr:.3e}", loss=f"{self.loss / self.steps:.5f}",
                    train_metric=f"{self.metric / self.steps:.5f}",
                    samples_per_s=f"{self.rate:.1f}", val_metric=f"{val.value:.5f}")  # fmt: skip

    def info(self) -> str:
        return (f"loss {self.loss / self.steps:.3f} acc {100 * self.metric / self.steps:.1f}%"
                f" {self.rate:.0f}/s")  # fmt: skip


def fit(
    config: TrainConfig,
    out: str | Path,
    *,
    data: Data | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    time_limit: float | None = None,
    plan: Plan | None = None,
) -> RunResult:
    """Train ``config`` into the run directory ``out`` and evaluate on the test split.

    ``resume`` continues from ``out/state.pt``. ``stop_after`` ends the run after that
    step as if it had been killed right after its checkpoint (for tests and budgets);
    ``time_limit`` (seconds) stops early the same way. Checkpoints are written every
    ``eval_every`` steps and at the end. With ``config.patience``, the run stops once
    that many validations in a row have not improved on the best one and ends with the
    best validation's weights. ``plan`` (from ``plan_run``) is recorded in ``run.json``
    beside the measured wall time and peak memory.
    """
    out = check_output_dir(Path(out), create=False)
    where = world()
    # bad data: refused before out is touched; rank 0 builds (and caches) it first
    data = data or main_first(where, lambda: resolve_data(config, progress and where.main))
    if where.parallel and isinstance(data, PointTaskData):
        raise TrainingError(
            f"several processes train grid tasks only; {data.name} holds point clouds, whose"
            " scenes differ in size (train with one process)"
        )
    if config.mix and not isinstance(data, PointTaskData):
        raise TrainingError(f"--mix mixes point-cloud scenes; {data.name} holds grids")
    if where.parallel and config.teacher == "conv":
        raise TrainingError("several processes cannot train the conv teacher: train it first"
                            " (one process) and pass its run as --teacher")  # fmt: skip
    with exclusive_dir(out) if where.main else contextlib.nullcontext():
        return _fit(config, out, data, resume, progress and where.main, stop_after, time_limit,
                    plan, where)  # fmt: skip


class _Best:
    """The best validation so far and the validations since (for ``patience``)."""

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        saved = saved or {}
        self.step: int | None = saved.get("step")
        self.value: float | None = saved.get("value")
        self.waited: int = saved.get("waited", 0)
        self.stopped: bool = saved.get("stopped", False)

    def update(self, step: int, value: float, patience: int) -> bool:
        """Record validation ``value`` at ``step``; True if it is the best so far."""
        better = self.value is None or value > self.value
        if better:
            self.step, self.value, self.waited = step, value, 0
        else:
            self.waited += 1
            self.stopped = self.waited >= patience
        return better

    def to_dict(self) -> dict[str, Any]:
        return dict(step=self.step, value=self.value, waited=self.waited, stopped=self.stopped)


def _use_best(out: Path, model: NdModel) -> None:
    """Load ``best.safetensors`` into ``model`` and make it the run's ``model.safetensors``."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(out / "best.safetensors")))
    save_weights(out / "model.safetensors", model)


def _average(config: TrainConfig, model: NdModel, out: Path, start: int):
    """The weight average of an ``ema`` run (restored from the checkpoint when resuming),
    else None."""
    if not config.ema:
        return None
    average = WeightAverage(model, config.ema)
    if start:
        average.load_state_dict(read_state(out)["ema"])
    return average


def _final_weights(config: TrainConfig, out: Path, model: NdModel, average, best: _Best) -> None:
    """The weights a run ends with, in ``model`` and ``model.safetensors``: the best
    validation's with ``patience`` (averaged ones with ``ema``), else the average with
    ``ema``, else the last."""
    if config.patience is not None and best.step is not None:
        _use_best(out, model)
    elif average is not None:
        model.load_state_dict(average.model.state_dict())
        save_weights(out / "model.safetensors", model)


def _global_batch(config: TrainConfig, data: Data, index, step: int, where: World):
    """Step ``step``'s global batch (samples and augmentation as one process draws them;
    stochastic depth seeded by the step), and this process's share of it."""
    torch.manual_seed(step_seed(config.seed, step))  # stochastic depth
    gen = torch.Generator().manual_seed(step_seed(config.seed, step) + 1)
    batch = make_batch(
        data, "train", index, gen if config.augment else None, config.mix, config.instance_aug
    )
    return share(batch, where)


def _stopping(done: int, stop_after, time_limit, began: float, where: World) -> bool:
    """Whether the run stops after step ``done`` (rank 0's clock decides for every process)."""
    if done == stop_after:
        return True
    if time_limit is None:
        return False
    return decide(time.perf_counter() - began > time_limit, where)


def _follow(config, out, data, model, optimizer, start, best, stop_after, time_limit, began,
            where: World) -> RunResult:  # fmt: skip
    """A process other than rank 0: the same steps on its share, no writing, no
    validation; it stops when rank 0 does."""
    if start >= config.steps or best.stopped:
        return RunResult(out, model, None, 0.0, start)
    trained, meter, done = wrap(model, where), _Meter(), start
    every = config.eval_every or max(1, config.steps // 10)
    for step in range(start, config.steps):
        tick = time.perf_counter()
        index = batch_indices(config, num_samples(data, "train"), step)
        batch = _global_batch(config, data, index, step, where)
        result = train_step(trained, optimizer, config, step, batch, None, out=out, where=where)
        meter.add(result.loss, result.metric, len(index), time.perf_counter() - tick)
        done = step + 1
        stopping = _stopping(done, stop_after, time_limit, began, where)
        if (done % every == 0 or done == config.steps or stopping) and decide(False, where):
            break
        if stopping:
            break
    return RunResult(out, model, None, meter.rate, done)


def _fit(config, out: Path, data, resume, progress, stop_after, time_limit, plan,
         where: World) -> RunResult:  # fmt: skip
    began = time.perf_counter()
    model = build_for(config, data)
    check_model_fits(model, data)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    settings = config.to_dict()
    start = restore(out, settings, resume, model, optimizer)
    best = _Best(read_state(out).get("best") if start else None)
    barrier(where)  # every process has read the run before rank 0 writes to it
    if not where.main:
        return _follow(config, out, data, model, optimizer, start, best, stop_after,
                       time_limit, began, where)  # fmt: skip
    average = _average(config, model, out, start)
    if start >= config.steps or best.stopped:  # a finished run: its weights are verified
        previous = read_run(out) if (out / "run.json").exists() else {}
        _final_weights(config, out, model, average, best)
        score = evaluate_model(model, data, "test")
        rate = float(previous.get("samples_per_s") or 0.0)
        info = dict(previous, status="done", test=score.to_dict(), steps=config.steps)
        write_json(out / "run.json", dict(info, train=settings, data=data_summary(data)))
        return RunResult(out, model, score, rate, int(previous.get("steps_done", start)),
                         best.step)  # fmt: skip
    write_json(out / "config.json", model.config.to_dict())
    run_info = dict(status="running", train=settings, data=data_summary(data))
    if plan is not None:
        run_info["plan"] = plan.to_dict()
    write_json(out / "run.json", run_info)
    teacher = _teacher(config, data, out, progress)
    every = config.eval_every or max(1, config.steps // 10)
    reporter = Reporter(out, config, start, progress, f"{config.model} {config.pattern or ''}")
    train_size, meter = num_samples(data, "train"), _Meter()
    trained = wrap(model, where)
    done = start
    try:
        for step in range(start, config.steps):
            tick = time.perf_counter()
            index = batch_indices(config, train_size, step)
            batch = _global_batch(config, data, index, step, where)
            result = train_step(trained, optimizer, config, step, batch, teacher, out=out,
                                where=where)  # fmt: skip
            if average is not None:
                average.update(model)
            meter.add(result.loss, result.metric, len(index), time.perf_counter() - tick)
            done = step + 1
            reporter.advance(done, meter.info())
            last = done == config.steps
            stopping = _stopping(done, stop_after, time_limit, began, where)
            if done % every == 0 or last or stopping:
                evaluated = model if average is None else average.model
                val = evaluate_model(evaluated, data, "val", limit=config.eval_samples)
                reporter.log(meter.row(done, lr_at(config, step), val))
                meter.reset()
                if config.patience is not None and best.update(done, val.value, config.patience):
                    save_weights(out / "best.safetensors", evaluated)
                extra = {} if average is None else dict(ema=average.state_dict())
                save_checkpoint(out, done, settings, model, optimizer, best=best.to_dict(),
                                **extra)  # fmt: skip
                if decide(best.stopped, where):
                    break
            if stopping and not last:
                return RunResult(out, model, None, meter.rate, done)
    finally:
        reporter.close()
    _final_weights(config, out, model, average, best)
    score = evaluate_model(model, data, "test")
    run_info.update(status="done", test=score.to_dict(), samples_per_s=meter.rate,
                    steps=config.steps, steps_done=done, seconds=time.perf_counter() - began,
                    peak_memory_bytes=peak_resident_bytes())  # fmt: skip
    if config.patience is not None:
        run_info.update(best_step=best.step, best_val=best.value,
                        stopped_early=best.stopped)  # fmt: skip
    write_json(out / "run.json", run_info)
    return RunResult(out, model, score, meter.rate, done, best.step)
