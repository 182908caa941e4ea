"""The plan of a training run, measured before its first step: wall time and peak memory.

``plan_run`` builds the run's model, measures what one training sample holds for the
backward pass (with a forward of two samples under ``saved_tensors_hooks``), refuses a
run whose estimated peak memory exceeds the machine's before allocating it, then times
a few real training steps and one validation pass and adds up the whole run: steps,
validations every ``steps // 10`` steps (checkpoints are not timed), and the final test. With a time
budget, it picks the number of steps that fits instead.
"""

from __future__ import annotations

import copy
import dataclasses
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UsageError, available_memory, format_bytes, proc_bytes
from .config import TrainConfig
from .data import Data, batch_indices, build_for, make_batch, num_samples, step_seed
from .defaults import Choice
from .evaluate import evaluate_model
from .step import param_groups, train_step

#: Training steps timed after one warm-up step.
TIMED_STEPS = 3
#: Margin on a step's saved activations for the backward's own buffers (gradients of
#: the activations, allocator slack). One check here: a vit on 16^3 blobs peaked at
#: 654 MiB against 584 MiB estimated.
ACTIVATION_FACTOR = 2.0


@dataclass
class Plan:
    """What a run will cost: measured per step and per evaluation, summed over the run."""

    choices: list[Choice]
    steps: int
    batch_size: int
    step_seconds: float
    val_seconds: float
    test_seconds: float
    evaluations: int
    activation_bytes: int  # saved for backward, per sample
    state_bytes: int  # weights, gradients and AdamW moments
    baseline_bytes: int  # the process before the run (data, libraries)
    budget_minutes: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        """Estimated peak resident memory of the process during training."""
        step = ACTIVATION_FACTOR * self.activation_bytes * self.batch_size
        return int(self.baseline_bytes + self.state_bytes + step)

    @property
    def seconds(self) -> float:
        """Estimated wall time of the run (training, validations, test)."""
        return (self.steps * self.step_seconds + self.evaluations * self.val_seconds
                + self.test_seconds)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        info = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        info["choices"] = [c.to_dict() for c in self.choices]
        return dict(info, peak_bytes=self.peak_bytes, seconds=self.seconds)

    def lines(self) -> list[str]:
        """The plan as printed before a run: every choice, then the estimates."""
        out = ["plan:"]
        for c in self.choices:
            value = ", ".join(f"{k}={v}" for k, v in c.value.items()) if isinstance(
                c.value, dict) else c.value  # fmt: skip
            out.append(f"  {c.setting:<8} {value}  ({c.reason})")
        out.append(
            f"  time     about {_duration(self.seconds)}: {self.steps} steps x"
            f" {self.step_seconds:.2f} s + {self.evaluations} validations x"
            f" {self.val_seconds:.1f} s + test {self.test_seconds:.1f} s"
        )
        out.append(
            f"  memory   about {format_bytes(self.peak_bytes)} peak"
            f" ({format_bytes(self.activation_bytes)} of activations per sample x"
            f" {self.batch_size}, {format_bytes(self.state_bytes)} of weights and optimizer)"
        )
        out += [f"  note     {n}" for n in self.notes]
        return out


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def resident_bytes() -> int:
    """The process's resident memory now (``VmRSS``; the peak so far where unknown)."""
    now = proc_bytes("/proc/self/status", "VmRSS")
    return peak_resident_bytes() if now is None else now


def peak_resident_bytes() -> int:
    """The process's peak resident memory so far (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def saved_bytes_per_sample(model: torch.nn.Module, batch) -> int:
    """Bytes that a forward pass of ``batch`` saves for its backward, per sample (the
    parameters, which autograd also saves, are not counted; shared storages once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        try:
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            nbytes = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage
            return tensor
        if key not in params and key not in seen:
            seen.add(key)
            total += nbytes
        return tensor

    x, _ = batch
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    samples = int(x.batch.max()) + 1 if hasattr(x, "batch") else x.shape[0]  # PointBatch
    return total // max(1, samples)


def _state_bytes(model: torch.nn.Module) -> int:
    """Weights, gradients and AdamW's two moments."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters())


def memory_hint(config: TrainConfig) -> str:
    """What to change when a run does not fit."""
    hints = [f"a smaller --batch-size (now {config.batch_size})"]
    if config.pattern in (None, "full"):
        hints.append("a local --pattern such as 'neighborhood(5)'")
    hints.append("a larger --patch")
    return "try " + ", ".join(hints[:-1]) + " or " + hints[-1]


def plan_run(
    config: TrainConfig,
    data: Data,
    choices: list[Choice] | None = None,
    *,
    time_budget: float | None = None,
) -> tuple[TrainConfig, Plan]:
    """Measure ``config`` on ``data`` and return it (with its steps fitted to
    ``time_budget`` minutes if given) with its ``Plan``. Raises ``UsageError`` if the
    estimated peak memory exceeds what the machine has, before running a full batch."""
    choices = list(choices or [])
    baseline = resident_bytes()
    model = build_for(config, data)
    state = _state_bytes(model)
    n_train = num_samples(data, "train")
    probe = make_batch(data, "train", torch.arange(min(2, n_train)))
    per_sample = saved_bytes_per_sample(model, probe)
    plan = Plan(choices, config.steps, config.batch_size, 0.0, 0.0, 0.0, 0, per_sample, state,
                baseline, time_budget)  # fmt: skip
    free = available_memory()
    need = plan.peak_bytes - baseline
    if free is not None and need > free:
        raise UsageError(
            f"this run needs about {format_bytes(plan.peak_bytes)} at its peak"
            f" ({format_bytes(per_sample)} of activations per sample x batch"
            f" {config.batch_size}), more than the {format_bytes(free + baseline)} this"
            f" machine has for it; {memory_hint(config)}"
        )
    plan.step_seconds = _time_steps(config, data, model)
    limit = min(config.eval_samples, num_samples(data, "val"))
    tick = time.perf_counter()
    evaluate_model(model, data, "val", limit=config.eval_samples)
    plan.val_seconds = time.perf_counter() - tick
    tests = num_samples(data, "test")
    plan.test_seconds = plan.val_seconds * tests / max(1, limit)
    if time_budget is not None:
        config = _fit_budget(config, plan, time_budget, choices)
    plan.steps = config.steps
    plan.evaluations = _evaluations(config)
    return config, plan


def _evaluations(config: TrainConfig) -> int:
    every = config.eval_every or max(1, config.steps // 10)
    return config.steps // every + (1 if config.steps % every else 0)


def _time_steps(config: TrainConfig, data: Data, model) -> float:
    """Median seconds of a training step (batch assembly included) after a warm-up, on a
    copy of the model so that the run itself starts untouched."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    n = num_samples(data, "train")
    rng_state = torch.get_rng_state()
    times = []
    for step in range(1 + TIMED_STEPS):
        tick = time.perf_counter()
        index = batch_indices(config, n, step)
        gen = torch.Generator().manual_seed(step_seed(config.seed, step) + 1)
        batch = make_batch(
            data, "train", index, gen if config.augment else None, config.mix, config.instance_aug
        )
        train_step(model, optimizer, config, step, batch)
        times.append(time.perf_counter() - tick)
    torch.set_rng_state(rng_state)
    return statistics.median(times[1:])


def _fit_budget(config: TrainConfig, plan: Plan, minutes: float, choices) -> TrainConfig:
    """``config`` with the steps that fit ``minutes`` of wall time (validations and the
    test included); the learning-rate schedule follows the new count."""
    seconds = 60 * minutes
    # ten validations (every steps // 10) and the test, whatever the step count
    fixed = 10 * plan.val_seconds + plan.test_seconds
    steps = int((seconds - fixed) / plan.step_seconds)
    if steps < 1:
        raise UsageError(
            f"--time-budget {minutes:g}: one step takes {plan.step_seconds:.1f} s and the"
            f" evaluations {fixed:.0f} s; not even one step fits"
        )
    for i, c in enumerate(choices):
        if c.setting == "steps":
            choices[i] = Choice("steps", steps, f"fits --time-budget {minutes:g} min at"
                                f" {plan.step_seconds:.2f} s per step", True)  # fmt: skip
    plan.notes.append(f"steps fitted to the time budget ({config.steps} before); the"
                      " learning-rate schedule follows them")  # fmt: skip
    return dataclasses.replace(config, steps=steps)


__all__ = ["Plan", "memory_hint", "peak_resident_bytes", "plan_run", "saved_bytes_per_sample"]
