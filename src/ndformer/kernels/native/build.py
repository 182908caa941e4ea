"""Compiling and loading the native kernels (``cpp/``), once per machine.

The source is compiled with the system's C++ compiler (``$CXX``, ``c++``, ``g++`` or
``clang++``; ``-O3 -march=native``, OpenMP) into ``$NDFORMER_KERNEL_CACHE`` (default
``$NDFORMER_CACHE/kernels``, else ``~/.cache/ndformer/kernels``) on first use, keyed by
every source file, the flags, the compiler and the CPU, and written atomically. The
library is loaded after torch, so its OpenMP runtime is the one torch already loaded:
the kernels run on torch's intra-op threads. Without a compiler, or with
``NDFORMER_NATIVE=0``, the kernels are unavailable and ``native_status()`` says why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..._cache import kernel_cache
from . import abi

SOURCES = Path(__file__).with_name("cpp")
SOURCE = SOURCES / "ndformer.cpp"  # includes the headers beside it
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC",
         *os.environ.get("NDFORMER_CXXFLAGS", "").split())  # fmt: skip
OPENMP = ("-fopenmp",)


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(lines)))


def compiler() -> str | None:
    """The C++ compiler the kernels are built with, or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@dataclass
class Library:
    """The loaded kernels (``lib``) and their constants, or why there are none."""

    lib: ctypes.CDLL | None
    reason: str
    constants: abi.Constants | None = None


def _source_texts() -> list[str]:
    return [p.read_text() for p in sorted(SOURCES.iterdir()) if p.suffix in (".cpp", ".h")]


def _compile(cxx: str, target: Path) -> str | None:
    """Build the library into ``target`` (atomically); None, or the compiler's complaint.
    With OpenMP where the compiler has it, else single-threaded."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        error = ""
        for extra in (OPENMP, ()):
            done = subprocess.run([cxx, *FLAGS, *extra, str(SOURCE), "-o", tmp],
                                  capture_output=True, text=True, timeout=600)  # fmt: skip
            if done.returncode == 0:
                os.replace(tmp, target)
                return None
            error = error or done.stderr
        lines = [ln for ln in error.splitlines() if "error" in ln] or error.splitlines()
        return f"compiling the native kernels failed: {' / '.join(lines[:3])[:500]}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> Library:
    """The compiled kernels of this machine (built on the first call)."""
    if os.environ.get("NDFORMER_NATIVE", "1") == "0":
        return Library(None, "disabled by NDFORMER_NATIVE=0")
    cxx = compiler()
    if cxx is None:
        return Library(None, "no C++ compiler found (set CXX)")
    try:
        version = subprocess.run(
            [cxx, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
        parallel = torch.__config__.parallel_info().splitlines()
        key = hashlib.sha256(
            "\n".join(
                [
                    *_source_texts(),
                    " ".join(FLAGS + OPENMP),
                    version,
                    _cpu_signature(),
                    *parallel[-1:],
                ]
            ).encode()
        ).hexdigest()[:16]
        target = kernel_cache() / f"ndformer-{key}.so"
        if not target.exists() and (error := _compile(cxx, target)) is not None:
            return Library(None, error)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        return Library(None, f"could not build or load the native kernels: {err}")
    constants, mismatch = abi.read(lib)
    mismatch = mismatch or _constants_differ(constants)
    if mismatch is not None:
        return Library(None, f"the native kernels' interface is out of date: {mismatch}")
    abi.declare(lib)
    return Library(lib, "ready", constants)


def _constants_differ(c: abi.Constants) -> str | None:
    """What the Python plans assume of the library that it does not hold, or None."""
    from . import lane_plans, stack_plans

    ours = dict(skip=lane_plans.SKIP, shift=lane_plans.SHIFT, bcast=lane_plans.BCAST,
                perm=lane_plans.PERM, gather=lane_plans.GATHER,
                shared_group=lane_plans.SHARED_GROUP, folds=stack_plans.STACK_FOLDS)  # fmt: skip
    wrong = {k: (getattr(c, k), v) for k, v in ours.items() if getattr(c, k) != v}
    return f"constants (C++, Python) differ: {wrong}" if wrong else None


def native_status() -> str:
    """ "ready", or why the native kernels are unavailable (compiles them on first call)."""
    return library().reason


def constants() -> abi.Constants:
    """The library's constants (needs the library)."""
    built = library()
    if built.constants is None:
        raise ValueError(f"the native kernels are unavailable: {built.reason}")
    return built.constants


def native_lanes(dtype: torch.dtype) -> int:
    """Queries per SIMD register for ``dtype`` (needs the library)."""
    c = constants()
    return c.lanes_f64 if dtype == torch.float64 else c.lanes_f32
