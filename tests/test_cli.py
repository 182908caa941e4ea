"""The ndformer command line (needs the 'all' extra: typer, rich, matplotlib)."""

from __future__ import annotations

import pytest

pytest.importorskip("typer")
pytest.importorskip("matplotlib")

from typer.testing import CliRunner

from ndformer.cli import build_app
from ndformer.viz import default_heads, parse_shape, pattern_view

runner = CliRunner()


def run(*args):
    return runner.invoke(build_app(), list(args))


def test_show_query_prints_counts_and_writes_png(tmp_path):
    out = tmp_path / "mask.png"
    result = run(
        "show",
        "neighborhood(7, dilation=2)",
        "--shape",
        "32x32",
        "--query",
        "5,5",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "query (5, 5) attends to 49 keys" in result.output
    assert "keys per query: min 49, mean 49.0, max 49" in result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_density_of_a_3d_grid_draws_slices(tmp_path):
    out = tmp_path / "density.png"
    result = run("show", "window(4, shift=2)", "--shape", "8x8x8", "--out", str(out))
    assert result.exit_code == 0, result.output
    # Partial border windows: 2 tokens per axis at the borders, 4 inside.
    assert "keys per query: min 8, mean 27.0, max 64" in result.output
    assert out.exists()


def test_show_head_dependent_pattern_picks_the_head():
    result = run(
        "show", "headsplit(axial(0), axial(1))", "--shape", "4x6", "--query", "1,2", "--head", "1"
    )
    assert result.exit_code == 0, result.output
    assert "head 1 of 2" in result.output
    assert "attends to 6 keys" in result.output  # axial(1): the whole row of 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "windw(4)"), "unknown pattern 'windw'"),
        (("show", "window(4)", "--shape", "8xa"), "shape must look like"),
        (("show", "window(4)", "--shape", "8x8", "--query", "9,1"), "outside 0..7"),
        (("show", "window(4)", "--shape", "8x8", "--query", "1"), "has 1 coordinates"),
        (("show", "neighborhood(9)", "--shape", "8x8"), "exceeds axis 0"),
        (("show", "window(4)", "--head", "3"), "head 3 is outside"),
    ],
)
def test_show_reports_bad_input_without_a_traceback(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_patterns_lists_signatures():
    result = run("patterns")
    assert result.exit_code == 0
    assert "window(size, shift=0, dilation=1)" in result.output


def test_view_helpers():
    assert parse_shape("16x16x16") == (16, 16, 16) and parse_shape("64") == (64,)
    assert default_heads(pattern_view("full", (4,)).pattern) == 1
    from ndformer import pattern

    assert default_heads(pattern("headsplit(full, headsplit(full, full, full))")) == 6
    view = pattern_view("causal", (6,), query="3")
    assert view.values.tolist() == [1, 1, 1, 1, 0, 0]
    assert view.text() == "# # # Q . ."
