"""Do the native kernels share torch's threads? A native attention call timed alone and
between torch matmuls (as inside a model), in one run.

    python benchmarks/native_threads.py

The kernels are built with OpenMP and loaded after torch, so they run on the OpenMP
runtime torch already loaded (its intra-op threads; ``torch.set_num_threads`` sets how
many). Two thread pools would fight for the cores when the kernels follow torch's own
operators; one pool shows as equal times. Rounds alternate the two settings; the table
gives medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ndformer import Grid, attend
from ndformer.kernels.native import native_status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    if native_status() != "ready":
        raise SystemExit(f"native kernels unavailable: {native_status()}")
    grid = Grid((128, 128))
    q, k, v = (torch.randn(1, 4, grid.num_tokens, 32) for _ in range(3))
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)

    def native() -> float:
        start = time.perf_counter()
        attend(q, k, v, "neighborhood(7)", grid)
        return time.perf_counter() - start

    alone, between = [], []
    with torch.inference_mode():
        native()
        for _ in range(args.rounds):
            time.sleep(0.05)  # let torch's threads go idle: the call starts cold
            alone.append(native())
            a @ b  # torch's threads just busy
            between.append(native())
            a @ b
    m_alone, m_between = statistics.median(alone), statistics.median(between)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads;"
          f" {torch.__config__.parallel_info().splitlines()[-1]}")  # fmt: skip
    print(f"neighborhood(7) on 128x128, 4 heads of 32: alone {1e3 * m_alone:.2f} ms,"
          f" right after a torch matmul {1e3 * m_between:.2f} ms"
          f" ({100 * (m_between / m_alone - 1):+.0f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
