"""The terminal side of ``ndformer bench``: progress bar, summary table, files."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .measure import matmul_peak
from .report import machine_info, write_outputs
from .runner import BenchConfig, Row, plan_cases, run_rows, sweep_exponents


def summary_table(rows: list[Row]) -> Table:
    table = Table(title="ndformer bench", show_lines=False)
    both = any(r.case.backward for r in rows)
    names = ["pattern", "shape", *(["pass"] if both else []), "median ms", "peak MiB",
             "GFLOP/s", "efficiency"]  # fmt: skip
    for name in names:
        table.add_column(name, justify="left" if name in ("pattern", "shape", "pass") else "right")
    for row in rows:
        shape = row.case.shape_label
        passed = ["fwd+bwd" if row.case.backward else "fwd"] if both else []
        if row.result is None:
            table.add_row(Text(row.case.label), shape, *passed, Text(row.note), "", "", "")
            continue
        r = row.result
        label = Text(row.case.label)
        table.add_row(label, shape, *passed, f"{r['median_ms']:.2f}", f"{r['peak_mib']:.0f}",
                      f"{r['gflop_per_s']:.1f}", f"{100 * r['efficiency']:.1f}%")  # fmt: skip
    return table


def run_bench_command(config: BenchConfig, out: Path, console: Console) -> list[Row]:
    """Measure the peak, run every case with a progress bar, write and summarise the results."""
    console.print(f"measuring the float32 matmul peak on {config.device} ...")
    peak = matmul_peak(config.device)
    info = machine_info(config.device, peak)
    console.print(f"matmul peak: {peak:.1f} GFLOP/s  (torch {info['torch']},"
                  f" {info['torch threads']} threads)")  # fmt: skip
    rows = plan_cases(config, peak)
    todo = sum(1 for r in rows if r.result is None and not r.note)
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("starting", total=todo)

        def on_start(row: Row) -> None:
            progress.update(task, description=f"{row.case.label} @ {row.case.shape_label}")

        def on_done(row: Row) -> None:
            progress.advance(task)

        run_rows(rows, peak, on_start=on_start, on_done=on_done)
    interrupted = any(r.note.startswith("not run") for r in rows)
    paths = write_outputs(rows, info, out, sweep=config.sweep)
    console.print(summary_table(rows))
    for (label, series), alpha in sorted(sweep_exponents(rows).items()):
        if alpha is not None:
            console.print(f"cost exponent alpha  {label} ({series}): {alpha:.2f}")
    if interrupted:
        console.print("interrupted: wrote the cases that finished")
    for path in paths:
        console.print(f"wrote {path}")
    return rows
