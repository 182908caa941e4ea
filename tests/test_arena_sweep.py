"""``arena --sizes``: the same arena over growing inputs, and its report."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("typer")
pytest.importorskip("matplotlib")

from ndformer.arena import ArenaConfig
from ndformer.arena.sweep import run_sweep, sized_task, sweep_table
from ndformer.arena.sweep_report import crossovers, write_sweep_outputs
from ndformer.errors import UsageError


@pytest.mark.parametrize(
    "name, size, expected",
    [
        ("pathfinder3d-16", 32, "pathfinder3d-32"),
        ("pathfinder2d-16-hard", 24, "pathfinder2d-24-hard"),
        ("shapes3d", 24, "shapes3d-24"),
        ("shapes3d-16", 8, "shapes3d-8"),
        ("scenes3d-24", 32, "scenes3d-32"),
    ],
)
def test_sized_task_replaces_the_size_in_the_name(name, size, expected):
    assert sized_task(name, size) == expected


@pytest.mark.parametrize(
    "name, size, message",
    [
        ("digits", 16, "needs a generated task with a size"),
        (None, 16, "got --data"),
        ("scenes-points", 16, "needs a generated task"),
        ("shapes3d-16", 4, "integer >= 8"),
        ("shapes3d-16", True, "integer >= 8"),
    ],
)
def test_sized_task_refuses_what_has_no_size(name, size, message):
    with pytest.raises(UsageError, match=message):
        sized_task(name, size)


def _row(size, tokens, pattern, value, step_ms):
    return dict(size=size, tokens=tokens, pattern=pattern, value=value, low=value - 0.01,
                high=value + 0.01, train_step_ms=step_ms)  # fmt: skip


def test_crossovers_name_the_first_size_where_a_local_pattern_is_faster():
    table = [
        _row(16, 512, "full", 0.9, 100.0),
        _row(16, 512, "window(4)", 0.8, 120.0),
        _row(16, 512, "neighborhood(3)", 0.85, 150.0),
        _row(32, 4096, "full", 0.9, 1000.0),
        _row(32, 4096, "window(4)", 0.8, 250.0),
        _row(32, 4096, "neighborhood(3)", 0.85, 1100.0),
    ]
    for s in table:  # what sweep_table adds
        s["step_vs_full"] = s["train_step_ms"] / next(
            f["train_step_ms"] for f in table if f["size"] == s["size"] and f["pattern"] == "full"
        )
    words = crossovers(table)
    assert set(words) == {"window(4)", "neighborhood(3)"}
    assert words["window(4)"].startswith("faster than full attention from 4,096 tokens (0.25x")
    assert words["neighborhood(3)"] == (
        "never faster than full attention here (up to 4,096 tokens: its step took 1.10x"
        " full's or more)"
    )


def test_a_tiny_sweep_runs_one_arena_per_size_and_reports_tokens(tmp_path):
    config = ArenaConfig(task="shapes3d-8", patterns=["full", "window(2)"], steps=2,
                         batch_size=8, overrides=dict(depth=1, dim=16, heads=2, patch=2),
                         out=tmp_path / "sweep")  # fmt: skip
    results = run_sweep(config, [10, 8])
    assert sorted(results) == [8, 10]
    for size, (rows, _, sized) in results.items():
        assert sized.task == f"shapes3d-{size}" and sized.out == config.out / f"size-{size}"
        assert (sized.out / "report.md").exists()
        assert [r["steps"] for r in rows] == [2, 2]
    table = sweep_table(results)
    assert [(s["size"], s["tokens"], s["pattern"]) for s in table] == [
        (8, 64, "full"), (8, 64, "window(2)"), (10, 125, "full"), (10, 125, "window(2)")
    ]  # fmt: skip
    assert all(s["step_vs_full"] > 0 for s in table)
    assert [s["step_vs_full"] for s in table if s["pattern"] == "full"] == [1.0, 1.0]
    paths = write_sweep_outputs(results, config.out, "ndformer arena --sizes 8 10")
    assert [p.name for p in paths] == ["results.csv", "report.md", "scale.png"]
    report = (config.out / "report.md").read_text()
    assert "| 10 | 125 | `window(2)` |" in report and "--sizes 8 10" in report
    assert len((config.out / "results.csv").read_text().splitlines()) == 5


def test_sizes_must_differ():
    config = ArenaConfig(task="shapes3d-8")
    with pytest.raises(UsageError, match="each size once"):
        run_sweep(config, [8, 8])


def test_the_arena_plans_every_entry_and_a_dry_run_trains_nothing(tmp_path):
    from ndformer.arena import run_arena
    from test_arena import tiny_arena

    printed: list[str] = []
    config = tiny_arena(tmp_path, "dry", jobs=2)
    rows, notes = run_arena(config, on_plan=printed.extend, dry_run=True)
    assert rows == [] and not config.out.exists()
    assert printed[0] == "plan: 2 entries at a time, on 1 thread each:" and printed[
        1
    ].lstrip().startswith("full ")
    assert "4 steps x" in printed[1] and "window(2)" in printed[2]
    assert printed[-1].startswith("  in all   about")
    assert notes["plan"]["seconds"] > 0 and notes["plan"]["peak_bytes"] > 2**20


def test_an_arena_entry_that_would_not_fit_is_refused_before_training(tmp_path, monkeypatch):
    import ndformer.train.plan as plan_module
    from ndformer.arena.plan import plan_entries
    from test_arena import tiny_arena

    monkeypatch.setattr(plan_module, "available_memory", lambda: 1024)
    config = tiny_arena(tmp_path)
    configs = [config.train_config(spec, 0) for spec in config.patterns]
    planned = plan_entries(configs)
    assert planned["entry"] == 0 and "this run needs about" in planned["refused"]
    assert "smaller --batch-size" in planned["refused"]


def test_the_arena_estimate_adds_runs_workers_and_cost_rounds():
    from ndformer.arena.plan import WORKER_SECONDS, arena_seconds, plan_lines

    plans = [dict(seconds=60.0, step_seconds=0.5, peak_bytes=2**30),
             dict(seconds=30.0, step_seconds=0.25, peak_bytes=2**29)]  # fmt: skip
    assert arena_seconds(plans, 5) == pytest.approx(90 + 3 * WORKER_SECONDS + 6 * 0.75)
    lines = plan_lines(["full", "window(4)"], [120, 120], plans, 5)
    assert lines[1] == "  full       120 steps x 0.50 s, about 60 s, 1.0 GiB peak"
    assert "at most 1.0 GiB at once" in lines[-1] and lines[0].startswith("plan: 1 entry at")
    # two at a time: the longer run and its worker, then the costs; both peaks at once
    assert arena_seconds(plans, 5, jobs=2) == pytest.approx(
        60 + WORKER_SECONDS + WORKER_SECONDS + 6 * 0.75
    )
    lines = plan_lines(["full", "window(4)"], [120, 120], plans, 5, jobs=2, threads=1)
    assert lines[0] == "plan: 2 entries at a time, on 1 thread each:"
    assert "at most 1.5 GiB at once" in lines[-1]
    three = [*plans, dict(seconds=20.0, step_seconds=0.1, peak_bytes=2**20)]
    # the third starts when the second finishes (30 + worker) and ends before the first
    assert arena_seconds(three, 5, jobs=2) == pytest.approx(60 + 2 * WORKER_SECONDS + 6 * 0.85)


def test_parallel_entries_start_in_order_and_at_most_jobs_at_a_time():
    import threading

    from ndformer.arena.jobs import run_parallel

    running, most, started = [0], [0], []
    lock = threading.Lock()

    def run(number):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02 * (5 - number))
        with lock:
            running[0] -= 1
        return dict(number=number)

    finished = list(run_parallel(run, 5, 2, on_start=started.append))
    assert started == [0, 1, 2, 3, 4] and most[0] == 2
    assert sorted(n for n, _ in finished) == list(range(5))
    assert all(row == dict(number=n) for n, row in finished)
    assert list(run_parallel(run, 3, 1)) == [(n, dict(number=n)) for n in range(3)]
