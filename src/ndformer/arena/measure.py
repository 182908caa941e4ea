"""One arena entry: train, evaluate and measure a model; run in its own worker process.

    echo '{"config": {...TrainConfig...}, "out": "dir"}' \
        | python -m ndformer.arena.measure

prints one JSON line: the test score, the steps, the peak memory of the process during
training, attention and dense GFLOP per sample, the training FLOPs, parameters. (Speeds
are measured afterwards, for all entries together: ``arena.cost``.)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from ..bench.measure import PeakMemory, pairs_per_head
from ..layers import Attention
from ..layout import Grid, Points
from ..models import NdModel
from ..point_batch import PointBatch
from ..train import TrainConfig, build_for, fit, resolve_data
from ..train.data import Data, make_batch, num_samples


def _one_sample(sample):
    """The first sample of a batch (the first scene of a ``PointBatch``)."""
    if isinstance(sample, PointBatch):
        keep = sample.batch == 0
        return PointBatch(sample.xyz[keep], sample.features[keep], sample.batch[keep])
    return sample[:1]


def attention_gflop(model: NdModel, sample) -> float:
    """Forward attention GFLOP for one sample: 4 * pairs * head_dim over heads and layers
    (modules with an ``attention_flops(args)`` method count their own).

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

    others: list[float] = []  # attention of other modules, e.g. SegFormer's reduced keys
    hooks = [
        m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, Attention)
    ] + [
        m.register_forward_hook(lambda m, args, out: others.append(m.attention_flops(args)))
        for m in model.modules()
        if hasattr(m, "attention_flops")
    ]
    try:
        with torch.inference_mode():
            model.eval()(sample)
    finally:
        for hook in hooks:
            hook.remove()
    total = sum(others)
    for module, layout in layouts:
        own = None
        if isinstance(layout, Grid):
            own = module.pattern.forward_flops(layout, module.heads, module.head_dim)
        if own is None:
            pairs = pairs_per_head(repr(module.pattern), layout, module.heads)
            own = 4.0 * sum(pairs) * module.head_dim
        total += own
    return total / 1e9


def tokens_per_sample(model: NdModel, sample) -> int:
    """Tokens the first attention layer of ``model`` sees for one sample (grid cells
    after the patch embedding, or a point model's tokens)."""
    seen: list[int] = []

    def record(module, args):
        if not seen:
            points = args[1] if len(args) > 1 else None
            seen.append(points.num_tokens if points is not None else args[0].shape[1:-1].numel())

    hooks = [
        m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, Attention)
    ]
    try:
        with torch.inference_mode():
            model.eval()(_one_sample(sample))
    finally:
        for hook in hooks:
            hook.remove()
    return int(seen[0]) if seen else 0


def dense_gflop(model: NdModel, sample) -> float:
    """Forward GFLOP of one sample's linear and convolution layers (2 per multiply-add):
    everything but attention's own products, counted by hooks on a forward pass (modules
    with a ``forward_flops(args, output)`` method count themselves)."""
    total = [0.0]

    def count(module, args, output):
        if isinstance(module, torch.nn.Linear):
            total[0] += 2.0 * output.numel() * module.in_features
        elif isinstance(module, torch.nn.modules.conv._ConvNd):
            # every output value sums in/groups x kernel products
            kernel = math.prod(module.kernel_size)
            total[0] += 2.0 * output.numel() * module.in_channels // module.groups * kernel
        else:  # ndformer's own convolutions
            total[0] += module.forward_flops(args, output)

    kinds = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, kinds) or hasattr(m, "forward_flops")
    ]
    try:
        with torch.inference_mode():
            model.eval()(_one_sample(sample))
    finally:
        for hook in hooks:
            hook.remove()
    return total[0] / 1e9


#: Training FLOPs over forward FLOPs: a backward pass costs two forwards for dense layers,
#: 2.5 for attention (its five backward matmuls against the forward's two).
DENSE_TRAINING, ATTENTION_TRAINING = 3.0, 3.5


def training_flops_per_step(config: dict[str, Any], data: Data | None = None) -> float:
    """FLOPs of one training step of ``config`` (a ``TrainConfig`` dict) on ``data``
    (default: the data it names): see ``step_flops``, on a freshly built model."""
    train_config = TrainConfig(**config)
    data = resolve_data(train_config) if data is None else data
    return step_flops(build_for(train_config, data), data, train_config.batch_size)


def step_flops(model: NdModel, data: Data, batch_size: int) -> float:
    """FLOPs of one training step: batch x (3 x the dense layers' forward + 3.5 x
    attention's forward), counted on the first training sample (point scenes differ in
    size: the first scene stands for all)."""
    sample, _ = make_batch(data, "train", [0])
    per_sample = DENSE_TRAINING * dense_gflop(model, sample) + ATTENTION_TRAINING * (
        attention_gflop(model, sample)
    )
    return 1e9 * per_sample * batch_size


def run_entry(config: dict[str, Any], out: str) -> dict:
    """Train one arena entry; returns its score, steps, peak memory and FLOP counts."""
    train_config = TrainConfig(**config)
    data = resolve_data(train_config)
    with PeakMemory("cpu") as peak:
        result = fit(train_config, Path(out), data=data, progress=False)
    model = result.model
    batch, _ = make_batch(data, "test", range(min(train_config.batch_size,
                                                   num_samples(data, "test"))))  # fmt: skip
    return dict(
        score=result.score.to_dict(),
        steps=train_config.steps,
        training_samples_per_s=result.samples_per_s,
        peak_mib=peak.bytes / 2**20,
        attention_gflop=attention_gflop(model, batch),
        tokens=tokens_per_sample(model, batch),
        dense_gflop=dense_gflop(model, batch),
        train_flops=step_flops(model, data, train_config.batch_size) * train_config.steps,
        params=sum(p.numel() for p in model.parameters()),
    )


def main() -> None:
    request = json.loads(sys.stdin.read())
    print(json.dumps(run_entry(request["config"], request["out"])))


if __name__ == "__main__":
    main()
