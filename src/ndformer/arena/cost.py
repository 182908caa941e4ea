"""What an arena entry costs, measured apart from its training, and how busy the machine was.

Training figures taken while training are at the mercy of whatever else the machine does
in that minute. Here every entry's training step and inference batch are timed in
interleaved rounds (all entries, round-robin, several rounds: a slow period hits every
entry alike), and each round also times a fixed matmul, the *probe*: its slowdown over
its fastest round, together with the share of the CPU time the process got, says how
loaded the machine was while the figures were taken.

    echo '{"entries": [...], "rounds": 5}' | python -m ndformer.arena.cost

prints one JSON line: per entry the medians and IQRs, and the contention figures.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch

from ..tasks.points import IGNORE
from ..train import TrainConfig, build_for, load, resolve_data
from ..train.data import batch_indices, make_batch, num_samples

#: A round whose probe takes this much longer than the fastest one was taken under load.
LOADED_SLOWDOWN = 1.25
#: Below this share of its threads' CPU time the process was competing for the cores.
LOADED_CPU_SHARE = 0.8


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of ``values`` (inclusive method)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


class _Probe:
    """A fixed float32 matmul timed once per round."""

    def __init__(self, size: int = 512) -> None:
        self.a, self.b = torch.randn(size, size), torch.randn(size, size)
        self.times: list[float] = []

    def __call__(self) -> None:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(self.a, self.b)
        self.times.append(time.perf_counter() - start)


class _Entry:
    """One entry's model, optimizer and fixed batches."""

    def __init__(self, spec: dict[str, Any], data) -> None:
        config = TrainConfig(**spec["config"])
        self.model = load(spec["run"]) if spec.get("run") else build_for(config, data)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-6)
        index = batch_indices(config, num_samples(data, "train"), 0)
        self.train_batch = make_batch(data, "train", index)
        count = min(config.batch_size, num_samples(data, "test"))
        self.test_batch, _ = make_batch(data, "test", range(count))
        self.batch_size, self.inference_batch = len(index), count
        self.train_s: list[float] = []
        self.infer_s: list[float] = []

    def train_step(self) -> None:
        x, y = self.train_batch
        self.model.train()
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(self.model(x), y, ignore_index=IGNORE)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.train_s.append(time.perf_counter() - start)

    def inference(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            start = time.perf_counter()
            self.model(self.test_batch)
            self.infer_s.append(time.perf_counter() - start)

    def figures(self) -> dict[str, float]:
        t1, t2, t3 = quartiles(self.train_s)
        i1, i2, i3 = quartiles(self.infer_s)
        return dict(
            train_step_ms=1e3 * t2,
            train_step_iqr_ms=1e3 * (t3 - t1),
            samples_per_s=self.batch_size / t2,
            inference_ms=1e3 * i2,
            inference_iqr_ms=1e3 * (i3 - i1),
            inference_batch=self.inference_batch,
        )


def measure_costs(entries: list[dict[str, Any]], rounds: int = 5, warmup: int = 1) -> dict:
    """Interleaved timings of every entry (``{"config": TrainConfig dict, "run": dir or
    None}``; None: a freshly built model, for calibrating a wall-clock budget).

    Returns ``{"entries": [figures per entry], "contention": {...}}``: train-step and
    inference medians and IQRs over ``rounds`` rounds (after ``warmup`` untimed ones), the
    probe's median slowdown over its fastest round, and the process's CPU share.
    """
    data = resolve_data(TrainConfig(**entries[0]["config"]))
    models = [_Entry(spec, data) for spec in entries]
    probe = _Probe()
    threads = torch.get_num_threads()
    for _ in range(warmup):
        for entry in models:
            entry.train_step()
            entry.inference()
        probe()
    for entry in models:
        entry.train_s.clear()
        entry.infer_s.clear()
    probe.times.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        probe()
        for entry in models:
            entry.train_step()
            entry.inference()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    slowdown = statistics.median(probe.times) / min(probe.times)
    share = cpu / (wall * threads)
    contention = dict(
        probe_slowdown=slowdown,
        cpu_share=share,
        threads=threads,
        rounds=rounds,
        loaded=slowdown > LOADED_SLOWDOWN or share < LOADED_CPU_SHARE,
    )
    return dict(entries=[m.figures() for m in models], contention=contention)


def main() -> None:
    request = json.loads(sys.stdin.read())
    result = measure_costs(request["entries"], request.get("rounds", 5), request.get("warmup", 1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
