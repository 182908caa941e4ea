"""Training-step speed of one ViT with full, window and neighborhood attention.

    python benchmarks/train_step.py               # 256x256 images, patch 4: 64x64 tokens
    python benchmarks/train_step.py --rounds 5 --batch 4 --out docs/bench/training/train_step.json

Every pattern trains the same model (vit-tiny's width and heads, ``--depth`` blocks): one
step is forward, backward and an AdamW update on a batch of random images and labels.
Steps of the patterns are interleaved round-robin, so a slow period of the machine hits
every pattern alike; the table gives each pattern's median step time, samples/s and its
speed-up over full attention, all from this one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ndformer

PATTERNS = ("full", "window(8)", "neighborhood(7)")


def step_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side (pixels)")
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--depth", type=int, default=4, help="transformer blocks")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per pattern")
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    steps = {}
    for spec in args.patterns:
        model = ndformer.create_model("vit-tiny", depth=args.depth, patch=args.patch,
                                      in_chans=1, num_classes=10, pattern=spec)  # fmt: skip
        steps[spec] = step_of(model, x, y)
        steps[spec]()  # warm-up: plans, kernels, allocator
    times: dict[str, list[float]] = {spec: [] for spec in steps}
    for _ in range(args.rounds):
        for spec, step in steps.items():
            start = time.perf_counter()
            step()
            times[spec].append(time.perf_counter() - start)
    tokens = (args.size // args.patch) ** 2
    print(
        f"vit-tiny width, {args.depth} blocks, {tokens} tokens ({args.size}x{args.size},"
        f" patch {args.patch}), batch {args.batch}, torch {torch.__version__},"
        f" {torch.get_num_threads()} threads; median of {args.rounds} interleaved steps"
    )
    full = statistics.median(times["full"]) if "full" in times else None
    results = {}
    print(f"{'pattern':18} {'step s':>8} {'samples/s':>10} {'vs full':>8}")
    for spec, samples in times.items():
        median = statistics.median(samples)
        speedup = full / median if full else None
        results[spec] = dict(step_seconds=median, samples_per_s=args.batch / median,
                             speedup_vs_full=speedup, steps=samples)  # fmt: skip
        shown = f"{speedup:7.1f}x" if speedup else ""
        print(f"{spec:18} {median:8.3f} {args.batch / median:10.2f} {shown:>8}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.out.write_text(json.dumps(dict(settings=settings, results=results), indent=2))


if __name__ == "__main__":
    main()
