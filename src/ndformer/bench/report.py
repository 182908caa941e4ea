"""Outputs of ``ndformer bench``: results.csv, report.md and PNG plots."""

from __future__ import annotations

import csv
import os
import platform
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..kernels.native import native_status
from .runner import Row, sweep_exponents

CSV_COLUMNS = (
    "pattern", "shape", "ndim", "tokens", "heads", "head_dim", "batch", "dtype", "device",
    "pass", "median_ms", "iqr_ms", "peak_mib", "pairs", "gflop", "gflop_per_s", "efficiency",
    "kernel", "note",
)  # fmt: skip


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu", peak_gflops: float | None = None) -> dict[str, str]:
    """Versions, processor, threads and (if given) the measured matmul peak."""
    info = {
        "ndformer": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": f"{_cpu_model()} ({os.cpu_count()} logical cores)",
        "torch threads": str(torch.get_num_threads()),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device"] = f"{device} ({torch.cuda.get_device_name(device)})"
    if device == "cpu":
        info["native kernel"] = native_status()
    if peak_gflops is not None:
        info["float32 matmul peak"] = (
            f"{peak_gflops:.1f} GFLOP/s (fastest of 10 square 2048 matmuls)"
        )
    return info


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _pass(row: Row) -> str:
    return "forward+backward" if row.case.backward else "forward"


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            c = row.case
            ndim = 3 if c.points else len(c.shape)
            values = [c.label, c.shape_label, ndim, c.tokens, c.heads, c.head_dim,
                      c.batch, c.dtype, c.device, _pass(row)]  # fmt: skip
            for key in CSV_COLUMNS[10:17]:
                value = row.value(key)
                values.append("" if value is None else f"{value:.6g}")
            values += [row.value("kernel") or "", row.note]
            writer.writerow(values)


def _cell(text: str) -> str:
    """Text for a markdown table cell: a union's "|" would split the cell."""
    return text.replace("|", "\\|")


def _fmt(value: float | None, digits: str) -> str:
    return "" if value is None else format(value, digits)


def write_report(rows: list[Row], info: dict[str, str], path: Path, sweep: bool = False) -> None:
    lines = ["# ndformer bench", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    first = rows[0].case if rows else None
    if first is not None:
        lines += [
            f"- **setting**: heads {first.heads}, head_dim {first.head_dim}, batch {first.batch},"
            f" {first.dtype}, {_pass(rows[0])}",
        ]
    lines += [
        "",
        f"Times are medians (and interquartile ranges) of repeated calls after"
        f" {first.warmup if first else 0}"
        " warm-up call(s) (the first builds the pattern's cached tiling plan);",
        "each case ran alone in a fresh worker process, and `peak MiB` is that process' peak",
        "memory during the case (inputs included) above its memory before it.",
        "`pairs/query` and `GFLOP` are exact counts from the pattern: FLOPs = 4 · pairs ·",
        "head_dim · batch over all heads for the forward pass (×3.5 in all with the backward",
        "pass: the forward's two matmuls and the backward's five). Dense masked SDPA computes all",
        "N² pairs but is credited only with the pattern's pairs, so its efficiency shows the",
        "waste.",
        "`efficiency` = achieved GFLOP/s ÷ the matmul peak above.",
        "",
    ]
    both = any(r.case.backward for r in rows)
    for shape in dict.fromkeys((r.case.shape, r.case.points) for r in rows):
        group = [r for r in rows if (r.case.shape, r.case.points) == shape]
        lines += [f"## {group[0].case.shape_label} ({group[0].case.tokens} tokens)", ""]
        lines += [
            "| pattern |" + (" pass |" if both else "") + " backend | median ms | IQR ms |"
            " peak MiB | pairs/query | GFLOP | GFLOP/s | efficiency | time vs full |"
            + (" × forward |" if both else ""),
            "|---|"
            + ("---|" if both else "")
            + "---|---:|---:|---:|---:|---:|---:|---:|---:|"
            + ("---:|" if both else ""),
        ]
        for r in group:
            lines.append(_report_row(r, group, both))
        lines.append("")
    lines += _exponent_section(rows, sweep)
    path.write_text("\n".join(lines))


def _twin(row: Row, group: list[Row], backward: bool) -> Row | None:
    """The row of the same case (label) in the given pass, if it ran."""
    return next(
        (r for r in group if r.case.label == row.case.label and r.case.backward == backward
         and r.result is not None), None
    )  # fmt: skip


def _report_row(r: Row, group: list[Row], both: bool) -> str:
    label = r.case.label
    if r.case.reference == "dense masked SDPA":
        label += f" ({r.case.pattern} mask)"
    elif r.case.reference and r.case.reference != "full (SDPA)":
        label += f" ({r.case.pattern})"
    label = _cell(label)
    passed = f" {'fwd+bwd' if r.case.backward else 'fwd'} |" if both else ""
    if r.result is None:
        return f"| {label} |{passed} | {r.note} | | | | | | | |" + (" |" if both else "")
    res = r.result
    full = next((x for x in group if x.case.label.startswith("full") and x.result
                 and x.case.backward == r.case.backward), None)  # fmt: skip
    ratio = f"{res['median_ms'] / full.result['median_ms']:.3f}×" if full else ""
    line = (
        f"| {label} |{passed} {res.get('kernel', '')} | {res['median_ms']:.2f}"
        f" | {res['iqr_ms']:.2f} | {res['peak_mib']:.0f}"
        f" | {res['pairs'] / r.case.tokens:.1f} | {res['gflop']:.3f}"
        f" | {res['gflop_per_s']:.1f} | {100 * res['efficiency']:.1f}% | {ratio} |"
    )
    if both:
        forward = _twin(r, group, False) if r.case.backward else None
        line += f" {res['median_ms'] / forward.result['median_ms']:.2f}× |" if forward else " |"
    return line


def _exponent_section(rows: list[Row], sweep: bool) -> list[str]:
    """The fitted cost exponents, for every (pattern, ndim) measured at two sizes or more."""
    alphas = {key: a for key, a in sorted(sweep_exponents(rows).items()) if a is not None}
    if not alphas:
        return []
    lines = ["## Cost exponent", "", "time ∝ tokens^α, least squares over the sizes that ran."]
    if not sweep:
        lines.append("Fitted over this run's few sizes; `--sweep` fits over more, larger ones.")
    lines += ["", "| pattern | layout | sizes | α |", "|---|---|---|---:|"]
    for (label, series), alpha in alphas.items():
        sizes = dict.fromkeys(
            r.case.shape_label
            for r in rows
            if r.result is not None and r.case.label == label and r.case.series == series
        )
        lines.append(f"| {_cell(label)} | {series} | {', '.join(sizes)} | {alpha:.2f} |")
    return [*lines, ""]


def write_plots(rows: list[Row], out: Path) -> list[Path]:
    """time_vs_tokens.png (log-log, one line per pattern and ndim) and efficiency.png."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.result is not None]
    if not done:
        return []
    labels = list(dict.fromkeys(r.case.label for r in done))
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    markers = {"1-D": "^", "2-D": "o", "3-D": "s", "4-D": "D", "points": "x"}

    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for label in labels:
        for series in sorted({r.case.series for r in done}):
            points = sorted(
                (r.case.tokens, r.result["median_ms"])
                for r in done
                if r.case.label == label and r.case.series == series
            )
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, marker=markers.get(series, "o"), color=colors[label],
                        label=f"{label} ({series})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("median time per call (ms)")
    ax.set_title("time vs tokens")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    paths = [out / "time_vs_tokens.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    shapes = list(dict.fromkeys(r.case.shape_label for r in done))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(labels)), 5), layout="constrained")
    width = 0.8 / len(shapes)
    for i, shape in enumerate(shapes):
        heights = []
        for label in labels:
            match = [r for r in done if r.case.label == label and r.case.shape_label == shape]
            heights.append(100 * match[0].result["efficiency"] if match else 0.0)
        ax.bar(np.arange(len(labels)) + i * width, heights, width, label=shape)
    ax.set_xticks(np.arange(len(labels)) + width * (len(shapes) - 1) / 2)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("efficiency (% of matmul peak, true FLOPs)")
    ax.set_title("efficiency per pattern")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    paths.append(out / "efficiency.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def write_outputs(
    rows: list[Row], info: dict[str, str], out: Path, sweep: bool = False
) -> list[Path]:
    """Write results.csv, report.md and the plots into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    write_report(rows, info, out / "report.md", sweep=sweep)
    return [out / "results.csv", out / "report.md", *write_plots(rows, out)]
