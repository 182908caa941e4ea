"""ndformer bench: exact pair counts, FLOPs, skipping rules, outputs, interruption."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ndformer import Grid
from ndformer.bench import BenchConfig, Case, fit_exponent, measure_case, plan_cases, run_rows
from ndformer.bench.measure import (
    DENSE_MASKED,
    FULL_SDPA,
    WINDOWS_RESHAPED,
    case_flops,
    pairs_per_head,
)
from strategies import any_pattern, shapes

pytest.importorskip("matplotlib")


@given(data=st.data())
def test_pairs_equal_the_dense_mask_count(data):
    shape = data.draw(shapes())
    heads = data.draw(st.integers(1, 4))
    _, pattern = data.draw(any_pattern(shape, heads))
    expected = pattern.mask(Grid(shape), heads=heads).expand(heads, -1, -1).sum((-1, -2))
    assert pairs_per_head(repr(pattern), shape, heads) == expected.tolist()


def test_flops_formula():
    case = Case("window(2)", None, (4, 4), heads=2, head_dim=8, batch=3)
    pairs = pairs_per_head("window(2)", (4, 4), 2)
    assert pairs == [64, 64]  # 16 queries x 4 keys per head
    assert case_flops(case, pairs) == 4 * 128 * 8 * 3
    backward = Case("window(2)", None, (4, 4), heads=2, head_dim=8, batch=3, backward=True)
    assert case_flops(backward, pairs) == 3.5 * case_flops(case, pairs)


def test_fit_exponent_recovers_a_power_law():
    tokens = [1000, 2000, 4000, 8000]
    assert fit_exponent(tokens, [3e-6 * n**1.5 for n in tokens]) == pytest.approx(1.5)
    assert fit_exponent([10], [1.0]) is None


def test_plan_marks_what_cannot_run():
    config = BenchConfig(
        patterns=["window(4)", "neighborhood(7)"], shapes=[(6, 6), (64, 64)], max_memory_gib=0.01
    )
    rows = plan_cases(config, peak_gflops=100.0)
    notes = {(r.case.label, r.case.shape): r.note for r in rows}
    assert "exceeds axis 0 of length 6" in notes[("neighborhood(7)", (6, 6))]
    assert notes[(DENSE_MASKED, (64, 64))].startswith("skipped: would need")
    assert notes[(DENSE_MASKED, (6, 6))] == ""
    assert notes[(FULL_SDPA, (64, 64))] == ""
    # A case estimated to take too long is skipped with the estimate.
    slow = plan_cases(BenchConfig(patterns=["window(4)"], shapes=[(64, 64)], max_seconds=1e-6), 1.0)
    assert next(r for r in slow if r.case.label == FULL_SDPA).note.startswith("skipped: would take")


def test_measure_case_reports_real_numbers():
    for backward in (False, True):
        result = measure_case(
            Case(
                "neighborhood(3)",
                None,
                (8, 8),
                heads=2,
                head_dim=8,
                repeats=3,
                min_seconds=0,
                backward=backward,
            )
        )
        assert result["runs"] == 3 and result["median_ms"] > 0 and result["iqr_ms"] >= 0
        assert result["pairs"] == 64 * 9
        assert result["peak_mib"] >= 0
        assert result["gflop_per_s"] == pytest.approx(result["gflop"] / result["median_ms"] * 1e3)


def test_run_rows_stops_cleanly_on_ctrl_c():
    config = BenchConfig(patterns=["window(2)", "axial(0)"], shapes=[(4, 4)])
    rows = plan_cases(config, peak_gflops=100.0)
    calls = []

    def worker(case):
        calls.append(case)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return measure_case(Case(**{**case.__dict__, "repeats": 1, "min_seconds": 0}))

    run_rows(rows, 100.0, worker=worker)
    assert [r.result is not None for r in rows] == [True, True, False, False, False]
    assert all(r.note == "not run (interrupted)" for r in rows[2:])


def test_bench_command_writes_csv_report_and_plots(tmp_path):
    from typer.testing import CliRunner

    from ndformer.cli import build_app, expand_multi_value_options

    args = expand_multi_value_options(
        ["bench", "--quick", "--patterns", "window(2)", "neighborhood(3) | axial(0)",
         "--shapes", "6x6", "4x4x4", "--heads", "2", "--head-dim", "6", "--out", str(tmp_path)]
    )  # fmt: skip
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert "matmul peak" in result.output
    for name in ("results.csv", "report.md", "time_vs_tokens.png", "efficiency.png"):
        assert (tmp_path / name).exists(), name
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:17] == [
        "pattern", "shape", "ndim", "tokens", "heads", "head_dim", "batch", "dtype", "device",
        "pass", "median_ms", "iqr_ms", "peak_mib", "pairs", "gflop", "gflop_per_s", "efficiency",
    ]  # fmt: skip
    expected = [
        FULL_SDPA,
        DENSE_MASKED,
        WINDOWS_RESHAPED,
        "window(2)",
        "neighborhood(3) | axial(0)",
    ]
    assert [r["pattern"] for r in rows] == expected * 2
    measured = [r for r in rows if r["median_ms"]]
    assert len(measured) == 10
    window_6x6 = rows[2]
    assert float(window_6x6["pairs"]) == 36 * 4
    assert 0 < float(window_6x6["efficiency"]) < 1.5
    report = (tmp_path / "report.md").read_text()
    assert "float32 matmul peak" in report and "## 4x4x4 (64 tokens)" in report
    assert "| neighborhood(3) \\| axial(0) |" in report  # escaped inside the table


def test_expand_multi_value_options():
    from ndformer.cli import expand_multi_value_options

    assert expand_multi_value_options(["bench", "--shapes", "8x8", "4x4x4", "--heads", "2"]) == [
        "bench", "--shapes", "8x8", "--shapes", "4x4x4", "--heads", "2",
    ]  # fmt: skip
    assert expand_multi_value_options(["show", "full", "--shape", "8"]) == [
        "show", "full", "--shape", "8",
    ]  # fmt: skip
    assert expand_multi_value_options(["arena", "--models", "conv-tiny", "segformer3d-tiny"]) == [
        "arena", "--models", "conv-tiny", "--models", "segformer3d-tiny",
    ]  # fmt: skip


def test_info_prints_versions_and_peak():
    from typer.testing import CliRunner

    from ndformer.cli import build_app

    result = CliRunner().invoke(build_app(), ["info"])
    assert result.exit_code == 0, result.output
    assert "torch" in result.output and "float32 matmul peak" in result.output


def test_bad_bench_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="dtype must be one of"):
        BenchConfig(dtype="float8")
    with pytest.raises(ValueError, match="unknown pattern 'windw'"):
        BenchConfig(patterns=["windw(2)"])
    with pytest.raises(ValueError, match="device must be like"):
        BenchConfig(device="gpu0")
    with pytest.raises(ValueError, match="heads must be >= 1"):
        BenchConfig(heads=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            BenchConfig(device="cuda")
    with pytest.raises(ValueError, match="backend must be one of auto, tiled, blocksparse, flex"):
        BenchConfig(backend="reference")
    with pytest.raises(ValueError, match="inference only on CPU"):
        BenchConfig(backend="flex", backward=True)
    assert BenchConfig(backend="native", backward=True).backward  # native kernels train too


def test_native_backend_times_the_patterns_it_runs():
    config = BenchConfig(
        patterns=["neighborhood(3)", "window(2) | axial(0)"], shapes=[(8, 8)], backend="native"
    )
    rows = plan_cases(config, 100.0)
    labels = [r.case.label for r in rows]
    assert labels[2:] == ["neighborhood(3) [native]", "window(2) | axial(0)"]
    result = measure_case(
        replace(rows[2].case, heads=2, head_dim=8, repeats=2, min_seconds=0, warmup=0)
    )
    # NATTEN semantics: kernel**2 keys for every query
    assert result["backend"] == "native" and result["pairs"] == 9 * 64


def test_backend_applies_to_mask_patterns_only():
    config = BenchConfig(patterns=["window(4)", "linear"], shapes=[(8, 8)], backend="blocksparse")
    rows = plan_cases(config, 100.0)
    labels = [r.case.label for r in rows]
    assert labels == ["full (SDPA)", "dense masked SDPA", "windows by reshape (SDPA)",
                      "window(4) [blocksparse]", "linear"]  # fmt: skip
    result = measure_case(
        replace(rows[3].case, heads=2, head_dim=8, repeats=2, min_seconds=0, warmup=0)
    )
    assert result["backend"] == "blocksparse" and result["pairs"] == 64 * 16


def test_sweep_fits_an_exponent_per_pattern_and_dimension(tmp_path):
    from ndformer.bench.report import write_outputs

    config = BenchConfig(
        patterns=["window(4)"], shapes=[(64,), (128,), (256,), (8, 8), (16, 16)], sweep=True
    )
    rows = plan_cases(config, peak_gflops=100.0)
    assert DENSE_MASKED not in {r.case.label for r in rows}  # no dense rows in a sweep

    def worker(case):  # synthetic times: window linear in tokens, full quadratic
        result = measure_case(Case(**{**case.__dict__, "repeats": 1, "min_seconds": 0}))
        power = 2.0 if case.reference == FULL_SDPA else 1.0
        result["median_ms"] = 1e-3 * case.tokens**power
        return result

    run_rows(rows, 100.0, worker=worker)
    from ndformer.bench import sweep_exponents

    alphas = sweep_exponents(rows)
    assert alphas[("window(4)", "1-D")] == pytest.approx(1.0)
    assert alphas[(FULL_SDPA, "2-D")] == pytest.approx(2.0)
    write_outputs(rows, {"machine": "test"}, tmp_path, sweep=True)
    report = (tmp_path / "report.md").read_text()
    assert "## Cost exponent" in report and "| window(4) | 1-D | 64, 128, 256 | 1.00 |" in report
    assert "| full (SDPA) | 2-D | 8x8, 16x16 | 2.00 |" in report
    # without --sweep the report still fits alpha over the sizes it has, and says so
    write_outputs(rows, {"machine": "test"}, tmp_path, sweep=False)
    report = (tmp_path / "report.md").read_text()
    assert "| window(4) | 1-D | 64, 128, 256 | 1.00 |" in report and "`--sweep` fits" in report


def test_points_cases_run_on_generated_scenes(tmp_path):
    from ndformer.bench.report import write_outputs
    from ndformer.points_data import surface_voxels

    voxels = surface_voxels(500, seed=0)
    assert voxels.shape == (500, 3) and len(voxels.unique(dim=0)) == 500 and voxels.min() >= 0
    config = BenchConfig(
        patterns=["serialized('hilbert', group=16)", "window(4)", "neighborhood(3)"],
        shapes=[],
        points=[300, 600],
        sweep=True,
    )
    rows = plan_cases(config, peak_gflops=100.0)
    notes = {(r.case.label, r.case.tokens): r.note for r in rows}
    assert "is defined on a grid" in notes[("neighborhood(3)", 300)]
    assert notes[("serialized('hilbert', group=16)", 600)] == ""

    def worker(case):
        return measure_case(Case(**{**case.__dict__, "repeats": 1, "min_seconds": 0}))

    run_rows(rows, 100.0, worker=worker)
    serialized = next(
        r for r in rows if r.case.label.startswith("serialized") and r.case.tokens == 600
    )
    assert serialized.result["pairs"] == 37 * 16 * 16 + 8 * 8  # 37 groups of 16, one of 8
    write_outputs(rows, {"machine": "test"}, tmp_path, sweep=True)
    report = (tmp_path / "report.md").read_text()
    assert (
        "## 600 points (600 tokens)" in report and "| points | 300 points, 600 points |" in report
    )
