"""Files and worker processes shared by the library: atomic writes, run-directory locks,
JSON workers."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DataError, UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Mode of the files ndformer writes: what ``open()`` would give under the process umask.
FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(handle)`` into a temporary file, fsync, then rename.

    Readers see the old file or the complete new one; an exception inside ``write``
    (or a crash) leaves the old file untouched and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


LOCK_NAME = ".lock"


def check_output_dir(path: Path, option: str = "--out", create: bool = True) -> Path:
    """Create the output folder ``path`` (and its parents) or raise a ``UsageError`` naming
    ``option`` if it is a file or cannot be written; ``create=False`` only checks."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is an existing file, not a folder")
    if not create:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {str(path)!r}: {str(existing)!r} is not writable")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{option} {str(path)!r} cannot be created: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {str(path)!r} is not writable")
    return path


@contextmanager
def exclusive_dir(path: Path, option: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on the output folder ``path`` (created if missing) while the
    block runs; a second holder fails at once with a ``DataError`` naming the first.

    The lock is an ``flock`` on ``path/.lock`` (which records the holder's pid, host and
    command): the kernel drops it when the process dies, so a stale lock file from a
    crashed run is simply taken over. Where ``fcntl`` is missing (Windows) the lock is
    a file created exclusively, taken over if its pid no longer runs.
    """
    created = not Path(path).exists()
    path = check_output_dir(path, option)
    lock = path / LOCK_NAME
    holder = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%H:%M:%S')}"
    holder += f": {' '.join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200]}"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    try:
        if fcntl is None:  # pragma: no cover - Windows
            with _pid_lock(lock, holder, option):
                yield path
            return
        fd = _flock(fcntl, lock, option)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, holder.encode())
            yield path
        finally:
            lock.unlink(missing_ok=True)  # still holding the flock: no one else owns it
            os.close(fd)
    finally:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only if it stayed empty: a failed start leaves nothing


def _flock(fcntl, lock: Path, option: str) -> int:
    """An fd of ``lock`` holding its exclusive flock; retried if the file was replaced
    between open and flock (a holder unlinks it when done)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            try:
                other = lock.read_text(errors="replace").strip() or "another process"
            except OSError:
                other = "another process"
            raise DataError(
                f"{option} {str(lock.parent)!r} is in use by {other}; wait for it to finish or"
                " choose another folder"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def _pid_lock(lock: Path, holder: str, option: str) -> Iterator[None]:  # pragma: no cover
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            break
        except FileExistsError:
            other = lock.read_text(errors="replace").strip()
            pid = int(other.split()[1]) if other.startswith("pid ") else None
            if pid is not None and _alive(pid):
                raise DataError(f"{option} {str(lock.parent)!r} is in use by {other}") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
    else:
        raise DataError(f"{option} {str(lock.parent)!r}: cannot take the lock {lock}")
    try:
        os.write(fd, holder.encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:  # pragma: no cover - Windows path
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def run_json_worker(module: str, request: Any, timeout: float | None = None,
                    env: dict[str, str] | None = None) -> Any:  # fmt: skip
    """Run ``python -m module`` with ``request`` as JSON on stdin (in environment ``env``,
    default this one's); return its last stdout line parsed as JSON. Raises
    ``RuntimeError`` with the worker's last error line if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", module],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
