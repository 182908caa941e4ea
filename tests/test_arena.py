"""The arena's answers hold: deterministic budgets, costs measured apart from training,
seed intervals, and a resume that loses nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("typer")
pytest.importorskip("matplotlib")

from ndformer.arena import ArenaConfig, run_arena
from ndformer.arena.cost import quartiles
from ndformer.arena.measure import training_flops_per_step
from ndformer.arena.report import summarize, write_outputs
from ndformer.arena.runner import config_dict
from ndformer.arena.stats import indistinguishable, seed_interval, t_quantile
from test_train import blobs_npz

TINY = dict(depth=1, dim=16, heads=2, patch=2)


def tiny_arena(tmp_path, out: str = "arena", **kwargs) -> ArenaConfig:
    data = tmp_path / "blobs.npz"
    if not data.exists():
        blobs_npz(data, n=(64, 16, 32), size=8)
    settings = dict(task=None, data=str(data), patterns=["full", "window(2)"], overrides=TINY,
                    steps=4, batch_size=8, out=tmp_path / out)  # fmt: skip
    return ArenaConfig(**{**settings, **kwargs})


def outcome(rows):
    return [(r["pattern"], r["seed"], r["steps"], r["score"]) for r in rows]


def test_two_runs_give_the_same_steps_and_scores(tmp_path):
    wall = time.perf_counter()
    first, notes = run_arena(tiny_arena(tmp_path, "a", jobs=1))
    wall = time.perf_counter() - wall
    second, _ = run_arena(tiny_arena(tmp_path, "b", jobs=2))  # parallel: the same figures
    assert outcome(first) == outcome(second)
    assert [r["steps"] for r in first] == [4, 4] and notes["samples"] == 32
    for row in first:  # costs come from the interleaved measurement after training
        assert row["train_step_ms"] > 0 and row["inference_ms"] > 0 and row["samples_per_s"] > 0
        assert row["train_step_iqr_ms"] >= 0
    contention = notes["contention"]
    assert contention["probe_slowdown"] >= 1 and contention["cpu_share"] > 0
    assert contention["rounds"] == 5 and isinstance(contention["loaded"], bool)
    assert wall - 1 < notes["seconds"] <= wall  # the whole arena's time, not its last entry's
    config = tiny_arena(tmp_path, "a")
    write_outputs(first, config_dict(config), config.out, "blobs", notes)
    report = (config.out / "report.md").read_text()
    assert "the same 32 training samples for every entry" in report
    assert "Every entry trained on 1 torch thread, 1 at a time" in report
    assert ("Measured under load" in report) == contention["loaded"]


def test_flops_budget_gives_every_entry_the_same_training_flops(tmp_path):
    config = tiny_arena(tmp_path, budget="flops", flops=3e8, patterns=["full", "window(2)"])
    rows, notes = run_arena(config)
    per_step = notes["flops_per_step"]
    assert per_step[0] > per_step[1] > 0  # full attention costs more per step
    for row, step_flops in zip(rows, per_step, strict=True):
        assert row["steps"] == int(3e8 // step_flops)
        assert 3e8 - step_flops < row["train_flops"] <= 3e8  # within one step of the budget
    config_dict_ = config_dict(config)
    write_outputs(rows, config_dict_, config.out, "blobs", notes)
    assert (
        "the same training FLOPs for every entry: 3e+08" in (config.out / "report.md").read_text()
    )


def test_training_flops_count_dense_layers_and_attention(tmp_path):
    config = tiny_arena(tmp_path).train_config("full", 0)
    flops = training_flops_per_step(config)
    # blobs 8x8, patch 2: 16 tokens of width 16, 1 block, 2 heads of 8, 2 classes, batch 8
    tokens, dim, hidden = 16, 16, 64
    dense = 2 * tokens * (2 * 2 * 1 * dim + dim * 3 * dim + dim * dim + 2 * dim * hidden)
    dense += 2 * dim * 2  # the classifier on the pooled token
    attention = 4 * tokens * tokens * 8 * 2
    assert flops == pytest.approx(8 * (3 * dense + 3.5 * attention))


def test_seed_interval_formula():
    assert t_quantile(2) == 4.303 and t_quantile(100) == pytest.approx(1.984)
    mean, low, high = seed_interval([0.80, 0.84, 0.88])
    half = 4.303 * 0.04 / 3**0.5  # t(0.975, 2) * sd / sqrt(3)
    assert (mean, low, high) == pytest.approx((0.84, 0.84 - half, 0.84 + half))
    assert seed_interval([0.99, 1.0])[2] == 1.0  # clipped to [0, 1]
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_interval([0.5])
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)


def test_seeds_report_their_spread_and_what_cannot_be_told_apart():
    def row(pattern, seed, value):
        score = dict(metric="accuracy", value=value, low=value - 0.05, high=value + 0.05, n=100)
        return dict(pattern=pattern, seed=seed, score=score, steps=10, params=1, peak_mib=1.0,
                    attention_gflop=0.1)  # fmt: skip

    rows = [row("a", 0, 0.90), row("a", 1, 0.94), row("a", 2, 0.92),
            row("b", 0, 0.89), row("b", 1, 0.91), row("b", 2, 0.93),
            row("c", 0, 0.50), row("c", 1, 0.52), row("c", 2, 0.51)]  # fmt: skip
    summary = summarize(rows)
    a = summary[0]
    assert a["value"] == pytest.approx(0.92)
    assert (a["low"], a["high"]) == pytest.approx(seed_interval([0.90, 0.94, 0.92])[1:])
    assert indistinguishable(summary) == ["b"]


def test_sigkilled_arena_resumes_only_the_unfinished_entries(tmp_path):
    reference, _ = run_arena(tiny_arena(tmp_path, "uninterrupted", steps=6))
    config = tiny_arena(tmp_path, "killed", steps=6)
    args = [sys.executable, "-m", "ndformer", "arena", "--data", config.data, "--patterns",
            "full", "window(2)", "--overrides", json.dumps(TINY), "--steps", "6",
            "--batch-size", "8", "--jobs", "1", "--out", str(config.out)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    first = config.out / "runs" / "full-seed0" / "entry.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the arena and its worker, mid-way
    proc.wait()
    assert first.exists() and not (config.out / "runs" / "window-2-seed0" / "entry.json").exists()
    kept = first.stat().st_mtime_ns
    rows, _ = run_arena(dataclasses.replace(config, jobs=2), resume=True)  # jobs may differ
    assert first.stat().st_mtime_ns == kept  # not retrained
    assert outcome(rows) == outcome(reference)
    with pytest.raises(ValueError, match=r"settings differ .* in \['steps'\]"):
        run_arena(tiny_arena(tmp_path, "killed", steps=7), resume=True)


def test_a_recipe_reaches_every_entry_and_ablations_switch_one_piece_off(tmp_path):
    from ndformer.arena.recipes import RECIPES
    from ndformer.errors import UsageError

    config = ArenaConfig(task=None, data="scans", model="volt-tiny", overrides={},
                         patterns=["full", "window(4)"], recipe="volt",
                         ablate=["lovasz", "qk_norm"])  # fmt: skip
    entries = config.entries()
    labels = [label for label, _, _ in entries]
    assert labels == ["full", "window(4)", "full - lovasz", "full - qk_norm", "full (plain)"]
    trains = {label: config.train_config(spec, 0, extra) for label, spec, extra in entries}
    on = trains["window(4)"]
    assert on["lovasz"] and on["ema"] == 0.999 and on["schedule"] == "onecycle"
    assert on["label_smoothing"] == 0.1 and on["overrides"] == dict(qk_norm=True, rope_base=100.0)
    assert not trains["full - lovasz"]["lovasz"] and trains["full - lovasz"]["ema"] == 0.999
    assert trains["full - qk_norm"]["overrides"]["qk_norm"] is False
    plain = trains["full (plain)"]
    for piece in RECIPES["volt"].values():
        where = plain["overrides"] if piece.where == "overrides" else plain
        assert where[piece.key] == piece.off
    for kwargs, message in [
        (dict(recipe="deit"), "--recipe must be one of volt, segformer3d, got 'deit'"),
        (dict(ablate=["ema"]), "--ablate switches off pieces of a recipe: give --recipe too"),
        (dict(recipe="volt", ablate=["dropout"]), "dropout not in the volt recipe; its pieces"),
        (dict(recipe="volt", model="vit-tiny"), "sets qk_norm, rope_base, which vit-tiny"),
    ]:  # fmt: skip
        with pytest.raises(UsageError, match=message):
            ArenaConfig(**{"task": None, "data": "scans", "model": "volt-tiny", **kwargs})


def test_other_models_join_the_arena_at_their_own_sizes_and_attention(tmp_path):
    from ndformer.errors import UsageError

    config = tiny_arena(tmp_path, models=["conv-tiny"], patterns=["full"])
    entries = config.entries()
    assert [label for label, _, _ in entries] == ["full", "conv-tiny"]
    train = config.train_config(*entries[1][1:2], 0, entries[1][2])
    assert train["model"] == "conv-tiny" and train["pattern"] is None and train["overrides"] == {}
    volt = ArenaConfig(task=None, data="scans", model="volt-tiny", overrides={}, recipe="volt",
                       models=["voxconv-tiny"])  # fmt: skip
    _, spec, extra = volt.entries()[-1]
    voxconv = volt.train_config(spec, 0, extra)
    assert voxconv["lovasz"] and voxconv["overrides"] == {}  # no qk_norm on a conv network
    rows, _ = run_arena(config)
    assert [r["pattern"] for r in rows] == ["full", "conv-tiny"]
    assert rows[1]["config"]["model"] == "conv-tiny" and rows[1]["dense_gflop"] > 0
    with pytest.raises(UsageError, match="--models: unknown resnet50; available:"):
        tiny_arena(tmp_path, models=["resnet50"])
