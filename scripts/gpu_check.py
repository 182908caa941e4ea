#!/usr/bin/env python3
"""One command on a machine with a CUDA GPU: the backend contract tests on the GPU, then
the quick forward + backward benchmark there.

    python3 scripts/gpu_check.py            # after python3 scripts/bootstrap.py --dev

Runs ``tests/test_gpu.py`` (every CUDA backend against the reference, values and
gradients) and ``tests/test_gpu_policy.py`` (the choice table), then ``ndformer bench
--quick --backward --device cuda --out docs/bench/gpu``. Exits non-zero on the first
failure; without a GPU it says so and exits 2.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"


def main() -> int:
    python = VENV / "python" if (VENV / "python").exists() else Path(sys.executable)
    probe = subprocess.run([str(python), "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    if probe.stdout.strip() != "True":
        print("gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False);"
              " run it on a GPU machine with a CUDA build of torch", file=sys.stderr)  # fmt: skip
        return 2
    steps = [
        [str(python), "-m", "pytest", "-q", "-s", "tests/test_gpu.py", "tests/test_gpu_policy.py"],
        [str(python), "-m", "ndformer", "bench", "--quick", "--backward", "--device", "cuda",
         "--out", "docs/bench/gpu"],
    ]  # fmt: skip
    for step in steps:
        print("gpu_check:", " ".join(step[1:]), flush=True)
        if subprocess.run(step, cwd=ROOT, check=False).returncode != 0:
            print(f"gpu_check: failed: {' '.join(step[1:])}", file=sys.stderr)
            return 1
    print("gpu_check: all passed; the benchmark report is in docs/bench/gpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
