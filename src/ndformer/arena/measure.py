"""One arena entry: train, evaluate and measure a model; run in its own worker process.

    echo '{"config": {...TrainConfig...}, "out": "dir", "budget_seconds": null}' \
        | python -m ndformer.arena.measure

prints one JSON line: the test score, train samples/s, inference ms per batch,
peak memory of the process during training, attention GFLOP per sample, parameters.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..bench.measure import PeakMemory, pairs_per_head
from ..layers import Attention
from ..layout import Grid, Points
from ..models import NdModel
from ..point_batch import PointBatch
from ..tasks.points import IGNORE
from ..train import TrainConfig, build_for, fit, resolve_data
from ..train.data import Data, batch_indices, make_batch, num_samples


def _one_sample(sample):
    """The first sample of a batch (the first scene of a ``PointBatch``)."""
    if isinstance(sample, PointBatch):
        keep = sample.batch == 0
        return PointBatch(sample.xyz[keep], sample.features[keep], sample.batch[keep])
    return sample[:1]


def attention_gflop(model: NdModel, sample) -> float:
    """Forward attention GFLOP for one sample: 4 * pairs * head_dim over heads and layers.

    ``pairs`` are counted exactly from each layer's pattern on the layout it sees (the
    token grid, or the ``Points`` of a point model's tokens); with token reduction,
    each block attends among the tokens it has left (n_l^2).
    """
    sample = _one_sample(sample)
    if getattr(model, "reduces_tokens", False):
        n = model.patch_embed(sample).shape[1:-1].numel()
        total = 0.0
        for block, tokens in zip(model.blocks, model.token_counts(n), strict=True):
            total += 4.0 * tokens * tokens * block.attn.head_dim * block.attn.heads
        return total / 1e9
    layouts: list[tuple[Attention, Grid | Points]] = []

    def record(module, args):
        points = args[1] if len(args) > 1 else None
        layouts.append((module, points if points is not None else Grid(tuple(args[0].shape[1:-1]))))

    hooks = [
        m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, Attention)
    ]
    try:
        with torch.inference_mode():
            model.eval()(sample)
    finally:
        for hook in hooks:
            hook.remove()
    total = 0.0
    for module, layout in layouts:
        own = None
        if isinstance(layout, Grid):
            own = module.pattern.forward_flops(layout, module.heads, module.head_dim)
        if own is None:
            pairs = pairs_per_head(repr(module.pattern), layout, module.heads)
            own = 4.0 * sum(pairs) * module.head_dim
        total += own
    return total / 1e9


def inference_ms(model: NdModel, batch: torch.Tensor, repeats: int = 7) -> float:
    """Median forward time (ms) of ``batch`` in inference mode, after one warm-up."""
    times = []
    with torch.inference_mode():
        model.eval()
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[1:])


def steps_for_budget(config: TrainConfig, data: Data, seconds: float) -> int:
    """Training steps that fit ``seconds``, from timing a few steps of a throwaway copy."""
    model = build_for(config, data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for step in range(5):
        index = batch_indices(config, num_samples(data, "train"), step)
        x, y = make_batch(data, "train", index)
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=IGNORE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    per_step = statistics.median(times[2:]) * 1.1  # evaluation and checkpoints on top
    return max(10, int(seconds / per_step))


def run_entry(config: dict[str, Any], out: str, budget_seconds: float | None = None) -> dict:
    """Train one arena entry and measure it; returns a JSON-able dict."""
    train_config = TrainConfig(**config)
    data = resolve_data(train_config)
    if budget_seconds is not None:
        train_config.steps = steps_for_budget(train_config, data, budget_seconds)
    with PeakMemory("cpu") as peak:
        result = fit(train_config, Path(out), data=data, progress=False)
    model = result.model
    count = min(train_config.batch_size, num_samples(data, "test"))
    batch, _ = make_batch(data, "test", range(count))
    return dict(
        score=result.score.to_dict(),
        steps=train_config.steps,
        samples_per_s=result.samples_per_s,
        inference_ms=inference_ms(model, batch),
        inference_batch=count,
        peak_mib=peak.bytes / 2**20,
        attention_gflop=attention_gflop(model, batch),
        params=sum(p.numel() for p in model.parameters()),
    )


def main() -> None:
    request = json.loads(sys.stdin.read())
    print(json.dumps(run_entry(request["config"], request["out"], request.get("budget_seconds"))))


if __name__ == "__main__":
    main()
