"""Core fast paths vs dense masked SDPA: speed on a 2-D grid, peak memory on a 3-D grid.

    python benchmarks/core_speed.py            # full run (about a minute on 2 cores)
    python benchmarks/core_speed.py --repeats 5

Speed: 2-D 64x64 tokens, heads 4, head_dim 32, float32, batch 1, forward only.
Every case is timed in this one process, interleaved round-robin so that drift
of the machine affects all cases alike; the table gives medians and ratios.

Memory: 3-D 32x32x32 tokens, Neighborhood(5), heads 2, head_dim 16, forward +
backward, run in a fresh child process; the figure is the process' peak
resident memory during the case minus its resident memory just before it
(inputs already allocated): everything the attention and its backward needed
at their peak (``ndformer.bench.measure.PeakMemory``: VmHWM on Linux, reset
through /proc/self/clear_refs; ru_maxrss elsewhere).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import ndformer
from ndformer import Grid, attend
from ndformer.bench.measure import PeakMemory
from ndformer.patterns import Neighborhood, Window


def windows_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, side: int, size: int):
    """The textbook Swin path for a square grid divisible by the window: reshape, SDPA, undo."""
    b, h, _, d = q.shape
    n = side // size

    def split(x: torch.Tensor) -> torch.Tensor:
        x = x.view(b, h, n, size, n, size, d).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(b, h, n * n, size * size, d)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    out = out.view(b, h, n, n, size, size, d).permute(0, 1, 2, 4, 3, 5, 6)
    return out.reshape(b, h, side * side, d)


def time_cases(cases: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds per case; cases are interleaved round-robin after a warm-up."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    with torch.inference_mode():
        for fn in cases.values():
            fn()
        for _ in range(repeats):
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def speed(repeats: int) -> None:
    side, heads, head_dim = 64, 4, 32
    grid = Grid((side, side))
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, grid.num_tokens, head_dim) for _ in range(3))
    window, neighborhood = Window(8), Neighborhood(7)
    window_mask = window.mask(grid)
    neighborhood_mask = neighborhood.mask(grid)

    def dense(mask):
        return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    # Every case computes the same attention (up to float32 rounding): check before timing.
    with torch.inference_mode():
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask)
        for got in (windows_by_hand(q, k, v, side, 8), attend(q, k, v, window, grid)):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=neighborhood_mask)
        torch.testing.assert_close(
            attend(q, k, v, neighborhood, grid), expected, rtol=1e-4, atol=1e-5
        )

    cases = {
        "window(8): dense masked SDPA": dense(window_mask),
        "window(8): reshape to windows + SDPA": lambda: windows_by_hand(q, k, v, side, 8),
        "window(8): ndformer.attend": lambda: attend(q, k, v, window, grid),
        "neighborhood(7): dense masked SDPA": dense(neighborhood_mask),
        "neighborhood(7): ndformer.attend": lambda: attend(q, k, v, neighborhood, grid),
    }
    ms = time_cases(cases, repeats)
    print(
        f"\n2-D {side}x{side}, heads {heads}, head_dim {head_dim}, float32, forward;"
        f" median of {repeats} runs, one process"
    )
    width = max(map(len, ms))
    for name, value in ms.items():
        print(f"  {name:<{width}}  {value:9.2f} ms")
    w_dense = ms["window(8): dense masked SDPA"]
    w_fast = ms["window(8): ndformer.attend"]
    w_hand = ms["window(8): reshape to windows + SDPA"]
    n_dense = ms["neighborhood(7): dense masked SDPA"]
    n_fast = ms["neighborhood(7): ndformer.attend"]
    print(
        f"  window(8): {w_dense / w_fast:.1f}x faster than dense masked SDPA (target >= 20x),"
        f" {w_fast / w_hand:.2f}x the hand-written path (target <= 1.25x)"
    )
    print(
        f"  neighborhood(7): {n_dense / n_fast:.1f}x faster than dense masked SDPA (target >= 5x)"
    )


def memory_case() -> None:
    """Child process: one 3-D forward + backward; prints the peak growth as JSON."""
    torch.manual_seed(0)
    grid = Grid((32, 32, 32))
    q, k, v = (torch.randn(1, 2, grid.num_tokens, 16, requires_grad=True) for _ in range(3))
    pattern = Neighborhood(5)
    attend(q[:, :, :216], k[:, :, :216], v[:, :, :216], pattern, Grid((6, 6, 6)))  # warm-up
    with PeakMemory("cpu") as peak:
        attend(q, k, v, pattern, grid).square().sum().backward()
    print(json.dumps({"peak_growth_bytes": peak.bytes}))


def memory() -> None:
    child = subprocess.run(
        [sys.executable, __file__, "--memory-case"], capture_output=True, text=True, check=True
    )
    growth = json.loads(child.stdout.strip().splitlines()[-1])["peak_growth_bytes"]
    n = 32**3
    print("\n3-D 32x32x32, neighborhood(5), heads 2, head_dim 16, float32, forward + backward")
    print(
        f"  peak memory growth: {growth / 2**20:.0f} MiB (target < 1024 MiB;"
        f" the dense bool mask alone would be {n * n / 2**30:.0f} GiB,"
        f" its float32 scores {4 * n * n * 2 / 2**30:.0f} GiB for 2 heads)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--memory-case", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        memory_case()
        return
    print(
        f"ndformer {ndformer.__version__}, torch {torch.__version__}, {platform.machine()},"
        f" {torch.get_num_threads()} threads"
    )
    memory()  # first: a child's ru_maxrss fallback would inherit this process' peak
    speed(args.repeats)


if __name__ == "__main__":
    main()
