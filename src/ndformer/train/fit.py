"""``fit``: one training run into a run directory, resumable, with progress and metrics."""

from __future__ import annotations

import contextlib
import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..models import NdModel
from ..tasks.points import IGNORE, PointTaskData
from .checkpoint import load, read_run, save_state, save_weights, write_json
from .loop import (
    METRIC_COLUMNS,
    Data,
    TrainConfig,
    TrainingError,
    _distill_loss,
    _param_groups,
    _step_seed,
    batch_indices,
    build_for,
    check_model_fits,
    evaluate_model,
    lr_at,
    make_batch,
    num_samples,
    resolve_data,
    train_metric,
)
from .metrics import Score


@dataclass
class RunResult:
    """What ``fit`` returns: the run directory, the model, its test score and its speed."""

    out: Path
    model: NdModel
    score: Score | None
    samples_per_s: float
    steps: int


class _Reporter:
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
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"),
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


def _prepare(config: TrainConfig, out: Path, resume: bool, model: NdModel, optimizer) -> int:
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
    if state["config"] != config.to_dict():
        changed = sorted(k for k, v in config.to_dict().items() if state["config"].get(k) != v)
        raise TrainingError(f"--resume: the settings differ from the saved run in {changed}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def fit(
    config: TrainConfig,
    out: str | Path,
    *,
    data: Data | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    time_limit: float | None = None,
) -> RunResult:
    """Train ``config`` into the run directory ``out`` and evaluate on the test split.

    ``resume`` continues from ``out/state.pt``. ``stop_after`` ends the run after that
    step as if it had been killed right after its checkpoint (for tests and budgets);
    ``time_limit`` (seconds) stops early the same way. Checkpoints are written every
    ``eval_every`` steps and at the end.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = data or resolve_data(config, progress)
    model = build_for(config, data)
    check_model_fits(model, data)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    start = _prepare(config, out, resume, model, optimizer)
    write_json(out / "config.json", model.config.to_dict())
    data_info = dict(
        name=data.name, kind=data.kind, num_classes=data.num_classes, class_names=data.class_names
    )
    if isinstance(data, PointTaskData):
        data_info.update(points=True, voxel_size=data.voxel_size, in_chans=data.in_chans)
    else:
        data_info.update(
            spatial=list(data.spatial),
            mean=data.mean.flatten().tolist(),
            std=data.std.flatten().tolist(),
        )
    run_info = dict(status="running", train=config.to_dict(), data=data_info)
    write_json(out / "run.json", run_info)
    teacher = _teacher(config, data, out, progress)
    every = config.eval_every or max(1, config.steps // 10)
    reporter = _Reporter(out, config, start, progress, f"{config.model} {config.pattern or ''}")
    train_size = num_samples(data, "train")
    seen, train_time, began = 0, 0.0, time.perf_counter()
    loss_sum = metric_sum = 0.0
    logged = 0
    step = start
    try:
        for step in range(start, config.steps):
            tick = time.perf_counter()
            model.train()
            lr = lr_at(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(_step_seed(config.seed, step))
            index = batch_indices(config, train_size, step)
            gen = None
            if config.augment:
                gen = torch.Generator().manual_seed(_step_seed(config.seed, step) + 1)
            x, y = make_batch(data, "train", index, gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE)
                if teacher is not None:
                    with torch.no_grad():
                        teacher.eval()
                        target = teacher(x).float()
                    kd = _distill_loss(logits.float(), target, config.temperature, y)
                    loss = (1 - config.distill_alpha) * loss + config.distill_alpha * kd
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss.item()} at step {step + 1}; stopped, the last checkpoint"
                    f" in {out} is kept (try a lower --lr)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer.step()
            train_time += time.perf_counter() - tick
            seen += len(index)
            loss_sum += loss.item()
            metric_sum += train_metric(logits, y)
            logged += 1
            done = step + 1
            rate = seen / max(train_time, 1e-9)
            info = f"loss {loss_sum / logged:.3f} acc {100 * metric_sum / logged:.1f}% {rate:.0f}/s"
            reporter.advance(done, info)
            last = done == config.steps
            stopping = done == stop_after or (
                time_limit is not None and time.perf_counter() - began > time_limit
            )
            if done % every == 0 or last or stopping:
                val = evaluate_model(model, data, "val", limit=config.eval_samples)
                reporter.log(
                    dict(
                        step=done,
                        lr=f"{lr:.3e}",
                        loss=f"{loss_sum / logged:.5f}",
                        train_metric=f"{metric_sum / logged:.5f}",
                        samples_per_s=f"{rate:.1f}",
                        val_metric=f"{val.value:.5f}",
                    )
                )
                loss_sum = metric_sum = 0.0
                logged = 0
                save_weights(out / "model.safetensors", model)
                save_state(
                    out / "state.pt",
                    dict(
                        step=done,
                        config=config.to_dict(),
                        model=model.state_dict(),
                        optimizer=optimizer.state_dict(),
                    ),
                )
            if stopping and not last:
                return RunResult(out, model, None, seen / max(train_time, 1e-9), done)
    finally:
        reporter.close()
    score = evaluate_model(model, data, "test")
    rate = seen / max(train_time, 1e-9)
    run_info.update(status="done", test=score.to_dict(), samples_per_s=rate, steps=config.steps)
    write_json(out / "run.json", run_info)
    return RunResult(out, model, score, rate, config.steps)
