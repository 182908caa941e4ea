"""``ndformer arena --sizes``: the same arena over growing inputs, the scale axis.

One ordinary arena per size (its own directory ``out/size-<n>/`` with its own report,
so every size can be read, resumed or rerun on its own), on the task named with that
size (``pathfinder3d-16`` at sizes 16 24 32 runs ``pathfinder3d-16``, ``-24``, ``-32``).
The sweep's own report puts the sizes side by side: per pattern, the measured training
step time and the test metric against tokens per sample, and each local pattern's step
time as a ratio to full attention at the same size, which is where it pays off or not.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .runner import ArenaConfig, run_arena

#: The task kinds with a size in their name, and the regex of that size.
SIZED_TASKS = {
    "pathfinder": r"(pathfinder[1-4]d-)(\d+)((?:-(?:easy|medium|hard))?)",
    "shapes3d": r"(shapes3d)(?:-(\d+))?()",
    "scenes3d": r"(scenes3d)(?:-(\d+))?()",
}
#: The smallest size the generators take.
MIN_SIZE = 8


def sized_task(name: str | None, size: int) -> str:
    """``name`` with its size replaced by ``size``: ``sized_task("pathfinder3d-16", 32)``
    is ``"pathfinder3d-32"``. Raises ``UsageError`` for tasks without a size."""
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise UsageError(f"--sizes: every size must be an integer >= {MIN_SIZE}, got {size!r}")
    for regex in SIZED_TASKS.values():
        match = re.fullmatch(regex, name or "")
        if match:
            head, _, tail = match.groups()
            return f"{head}{'' if head.endswith('-') else '-'}{size}{tail}"
    raise UsageError(
        f"--sizes needs a generated task with a size in its name (pathfinder3d-16,"
        f" shapes3d-16, scenes3d-24), got {'--data' if name is None else repr(name)}"
    )


def run_sweep(
    config: ArenaConfig,
    sizes: list[int],
    on_entry: Callable[[int, int, str, dict], None] | None = None,
    on_size: Callable[[int, str], None] | None = None,
    resume: bool = False,
    on_plan: Callable[[list[str]], None] | None = None,
    dry_run: bool = False,
) -> dict[int, tuple[list[dict[str, Any]], dict[str, Any], ArenaConfig]]:
    """Run ``config``'s arena once per size (``config.task`` resized, output in
    ``config.out / f"size-{n}"``); returns {size: (rows, notes, that size's config)}.
    Each size's report is written as soon as it finishes. Ctrl-C inside a size stops
    the sweep after writing what finished. ``on_plan`` and ``dry_run``: as in
    ``run_arena``, per size (a dry run plans every size and trains none)."""
    from .report import write_outputs

    if not sizes:
        raise UsageError("--sizes needs at least one size")
    if len(set(sizes)) != len(sizes):
        raise UsageError(f"--sizes: each size once, got {sizes}")
    tasks = [sized_task(config.task, size) for size in sorted(sizes)]
    results = {}
    for size, task in zip(sorted(sizes), tasks, strict=True):
        if on_size is not None:
            on_size(size, task)
        sized = dataclasses.replace(config, task=task, out=config.out / f"size-{size}")
        rows, notes = run_arena(sized, on_entry, resume, on_plan, dry_run)
        if dry_run:
            continue
        write_outputs(rows, sweep_settings(sized), sized.out, task_summary(task), notes)
        results[size] = (rows, notes, sized)
        finished = sum(1 for r in rows if "error" not in r)
        if len(rows) < len(sized.entries()) * sized.seeds or not finished:
            break  # interrupted (or nothing trained): the larger sizes would be too
    return results


def sweep_settings(config: ArenaConfig) -> dict[str, Any]:
    from .runner import config_dict

    return config_dict(config)


def task_summary(task: str) -> str:
    from ..tasks import load_task

    return load_task(task).summary()


SWEEP_COLUMNS = ["size", "tokens", "pattern", "seed", "metric", "value", "ci_low", "ci_high",
                 "steps", "train_step_ms", "train_step_iqr_ms", "inference_ms",
                 "attention_gflop", "peak_mib", "error"]  # fmt: skip


def sweep_table(results) -> list[dict[str, Any]]:
    """One row per (size, pattern): the arena summary with ``size`` and ``tokens`` and
    ``step_vs_full`` (its training step time over full attention's at that size)."""
    from .report import summarize

    table = []
    for size, (rows, _, _) in sorted(results.items()):
        tokens = next((r["tokens"] for r in rows if r.get("tokens")), None)
        summary = [dict(s, size=size, tokens=tokens) for s in summarize(rows)]
        full = next((s for s in summary if s["pattern"] == "full" and s.get("train_step_ms")),
                    None)  # fmt: skip
        for s in summary:
            if full is not None and s.get("train_step_ms"):
                s["step_vs_full"] = s["train_step_ms"] / full["train_step_ms"]
        table += summary
    return table


def write_sweep_csv(results, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, SWEEP_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for size, (rows, _, _) in sorted(results.items()):
            for row in rows:
                score = row.get("score") or {}
                writer.writerow(dict(
                    size=size, tokens=row.get("tokens", ""), pattern=row["pattern"],
                    seed=row["seed"], metric=score.get("metric", ""),
                    value=score.get("value", ""), ci_low=score.get("low", ""),
                    ci_high=score.get("high", ""), steps=row.get("steps", ""),
                    train_step_ms=row.get("train_step_ms", ""),
                    train_step_iqr_ms=row.get("train_step_iqr_ms", ""),
                    inference_ms=row.get("inference_ms", ""),
                    attention_gflop=row.get("attention_gflop", ""),
                    peak_mib=row.get("peak_mib", ""), error=row.get("error", "")))  # fmt: skip
