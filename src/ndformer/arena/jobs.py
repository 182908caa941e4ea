"""Arena entries as parallel worker processes (``ndformer arena --jobs N``).

Every entry trains in its own process on a fixed number of torch threads
(``ArenaConfig.threads``), so an entry computes the same floats whether it trains alone
or next to others: ``--jobs`` changes the wall time, not a figure of the report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

#: Environment variables that fix a worker's thread count before torch starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_jobs(threads: int, entries: int) -> int:
    """As many entries at a time as the cores hold at ``threads`` each (at least one,
    at most ``entries``)."""
    return max(1, min(entries, cores() // max(1, threads)))


def thread_env(threads: int) -> dict[str, str]:
    """The environment of a worker process that runs torch on ``threads`` threads."""
    return {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}


def run_parallel(
    run: Callable[[int], dict[str, Any]],
    count: int,
    jobs: int,
    on_start: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Call ``run(i)`` for ``i`` in ``range(count)``, at most ``jobs`` at a time, started
    in order; yields ``(i, result)`` as each finishes (in finishing order).

    ``run`` is called from worker threads (it is expected to wait on a process);
    ``on_start`` is called in the caller's thread just before an entry is handed to a
    worker. Closing the generator (or Ctrl-C in the caller) starts nothing new and waits
    for the running calls.
    """
    if jobs <= 1:
        for number in range(count):
            if on_start is not None:
                on_start(number)
            yield number, run(number)
        return
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="arena-entry") as pool:
        running: dict[Future, int] = {}
        following = iter(range(count))
        try:
            while True:
                while len(running) < jobs:
                    number = next(following, None)
                    if number is None:
                        break
                    if on_start is not None:
                        on_start(number)
                    running[pool.submit(run, number)] = number
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=running.__getitem__):
                    yield running.pop(future), future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
