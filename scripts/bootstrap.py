#!/usr/bin/env python3
"""Set up ndformer in a local virtual environment (``.venv``) on a fresh machine.

    python3 scripts/bootstrap.py          # library + command line (extra "all")
    python3 scripts/bootstrap.py --dev    # ... plus pytest, hypothesis, ruff, ONNX export

PyTorch is installed *before* ndformer so that pip never resolves ``torch>=2.5``
to the newest release with several GB of CUDA packages on a machine that has no
GPU. The order of preference, when the environment has no torch yet:

1. ``torch==2.13.0`` from a local wheel (pip's configured find-links, e.g. the
   CPU wheel shipped with this project's machines), its dependencies from the index;
2. on a machine without an NVIDIA GPU: the CPU build from PyTorch's CPU index;
3. otherwise the default index (GPU builds where a GPU exists).

An existing torch is always kept. Only the standard library is used here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFERRED_TORCH = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def venv_python(env_dir: Path) -> Path:
    """Path of the interpreter inside ``env_dir`` on this platform."""
    if os.name == "nt":
        return env_dir / "Scripts" / "python.exe"
    return env_dir / "bin" / "python"


def run(cmd: list[str], check: bool = True) -> bool:
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd)
    if check and result.returncode != 0:
        sys.exit(f"bootstrap: command failed with exit code {result.returncode}: {' '.join(cmd)}")
    return result.returncode == 0


def has_torch(python: Path) -> bool:
    probe = subprocess.run(
        [str(python), "-c", "import torch"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return probe.returncode == 0


def install_torch(python: Path) -> None:
    """Install a torch build that fits the machine, preferring the CPU wheel."""
    pip = [str(python), "-m", "pip", "install"]
    if has_torch(python):
        print("bootstrap: torch is already installed; keeping it")
        return
    # A local wheel (pip's find-links) is taken alone first; its small pure-Python
    # dependencies then come from the index, with torch itself already satisfied.
    if run([*pip, "--no-index", "--no-deps", PREFERRED_TORCH], check=False):
        run([*pip, PREFERRED_TORCH])
        return
    print("bootstrap: no local torch wheel; installing from an index")
    if shutil.which("nvidia-smi") is None:
        run([*pip, "torch>=2.5", "--index-url", CPU_INDEX])
    else:
        run([*pip, "torch>=2.5"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dev", action="store_true", help="also install test and lint tools")
    parser.add_argument(
        "--venv", default=str(ROOT / ".venv"), help="virtual environment directory (default: .venv)"
    )
    args = parser.parse_args()

    env_dir = Path(args.venv)
    python = venv_python(env_dir)
    if not python.exists():
        print(f"bootstrap: creating virtual environment {env_dir}")
        venv.EnvBuilder(with_pip=True).create(env_dir)
    install_torch(python)
    extras = "all,dev,export" if args.dev else "all"
    run([str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[{extras}]"])
    print(f"bootstrap: ready - run commands with {env_dir.name}/bin/ndformer or activate the venv")


if __name__ == "__main__":
    main()
