"""The report of an ``arena --sizes`` sweep: report.md, results.csv and scale.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..bench.report import machine_info
from .report import _budget_text
from .sweep import sweep_table, write_sweep_csv


def crossovers(table: list[dict[str, Any]]) -> dict[str, str]:
    """Per local pattern, in words: from which size on its measured training step is
    faster than full attention's, and its accuracy gap to full there."""
    words = {}
    patterns = dict.fromkeys(s["pattern"] for s in table if s["pattern"] != "full")
    for pattern in patterns:
        rows = [s for s in table if s["pattern"] == pattern and s.get("step_vs_full")]
        if not rows:
            continue
        faster = [s for s in rows if s["step_vs_full"] < 1.0]
        slower = [s for s in rows if s["step_vs_full"] >= 1.0]
        if not faster:
            most = max(s["tokens"] for s in rows)
            best = min(s["step_vs_full"] for s in rows)
            words[pattern] = (f"never faster than full attention here (up to {most:,} tokens:"
                              f" its step took {best:.2f}x full's or more)")  # fmt: skip
            continue
        first = min(faster, key=lambda s: s["tokens"])
        text = (f"faster than full attention from {first['tokens']:,} tokens"
                f" ({first['step_vs_full']:.2f}x its step time; at the largest size"
                f" {max(rows, key=lambda s: s['tokens'])['step_vs_full']:.2f}x)")  # fmt: skip
        later = [s for s in slower if s["tokens"] > first["tokens"]]
        if later:
            text += " but not at every larger size"
        words[pattern] = text
    return words


def _accuracy_gaps(table: list[dict[str, Any]]) -> dict[str, list[str]]:
    gaps: dict[str, list[str]] = {}
    full = {s["size"]: s for s in table if s["pattern"] == "full" and "value" in s}
    for s in table:
        if s["pattern"] == "full" or "value" not in s or s["size"] not in full:
            continue
        gap = 100 * (s["value"] - full[s["size"]]["value"])
        gaps.setdefault(s["pattern"], []).append(f"{gap:+.1f} points at {s['tokens']:,}")
    return gaps


def write_sweep_report(results, path: Path, command: str) -> None:
    """report.md of a sweep: settings, one row per (size, pattern), the crossovers."""
    table = sweep_table(results)
    sizes = sorted(results)
    first = results[sizes[0]][2]
    settings = dict(steps=first.steps, batch_size=first.batch_size, flops=first.flops,
                    minutes=first.minutes, budget=first.budget)  # fmt: skip
    lines = ["# ndformer arena: the scale axis", ""]
    lines += [
        f"Tasks: {', '.join(f'`{results[n][2].task}`' for n in sizes)}; model `{first.model}`"
        f" with overrides `{json.dumps(first.overrides)}`; budget per entry at every size:"
        f" {_budget_text(settings, {})}; seeds {first.seeds}.",
        "",
        "Train step ms: one training step (forward, backward, AdamW) of the batch, timed"
        " after training in interleaved rounds (median, IQR in brackets); x full: that time"
        " over full attention's at the same size. Every size has its own arena report in"
        " `size-<n>/`.",
        "",
    ]
    for n in sizes:
        c = results[n][1].get("contention")
        if c and c.get("loaded"):
            share = 100 * c["cpu_share"]
            lines.append(f"- size {n}: **costs measured under load** (probe"
                         f" {c['probe_slowdown']:.2f}x, CPU share {share:.0f}%)")  # fmt: skip
    lines += [
        "| size | tokens | pattern | metric (95% CI) | steps | train step ms | x full"
        " | attention GFLOP/sample | peak MiB |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in table:
        if "value" not in s:
            lines.append(f"| {s['size']} | {s['tokens'] or ''} | `{s['pattern']}` | failed:"
                         f" {s['error']} | | | | | |")  # fmt: skip
            continue
        step = "" if s.get("train_step_ms") is None else (
            f"{s['train_step_ms']:.0f} ({s['train_step_iqr_ms']:.0f})")  # fmt: skip
        ratio = f"{s['step_vs_full']:.2f}" if s.get("step_vs_full") else ""
        lines.append(
            f"| {s['size']} | {s['tokens']:,} | `{s['pattern']}` | {100 * s['value']:.1f}%"
            f" ({100 * s['low']:.1f}-{100 * s['high']:.1f}) | {s['steps']:.0f} | {step}"
            f" | {ratio} | {s['attention_gflop']:.3f} | {s['peak_mib']:.0f} |"
        )
    words, gaps = crossovers(table), _accuracy_gaps(table)
    if words:
        lines += ["", "## Where a local pattern pays off", ""]
        for pattern, text in words.items():
            gap = "; accuracy against full: " + ", ".join(gaps[pattern]) if pattern in gaps else ""
            lines.append(f"- `{pattern}`: {text}{gap}.")
    lines += ["", "![train step time and accuracy against tokens](scale.png)", ""]
    lines += ["## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine_info().items()]
    lines += ["", f"Reproduce: `{command}`"]
    path.write_text("\n".join(lines) + "\n")


def write_scale_plot(results, path: Path) -> Path | None:
    """Two panels against tokens per sample: training step time (log-log) and the test
    metric with its interval, one line per pattern."""
    table = [s for s in sweep_table(results) if "value" in s and s.get("tokens")]
    if not table:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (cost, score) = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    for i, pattern in enumerate(dict.fromkeys(s["pattern"] for s in table)):
        rows = sorted((s for s in table if s["pattern"] == pattern), key=lambda s: s["tokens"])
        tokens = [s["tokens"] for s in rows]
        color = plt.cm.tab10(i % 10)
        timed = [s for s in rows if s.get("train_step_ms")]
        cost.plot([s["tokens"] for s in timed], [s["train_step_ms"] for s in timed], "o-",
                  color=color, label=pattern)  # fmt: skip
        values = [100 * s["value"] for s in rows]
        bars = [[100 * (s["value"] - s["low"]) for s in rows],
                [100 * (s["high"] - s["value"]) for s in rows]]  # fmt: skip
        score.errorbar(tokens, values, yerr=bars, fmt="o-", color=color, capsize=3,
                       label=pattern)  # fmt: skip
    cost.set_xscale("log", base=2)
    cost.set_yscale("log")
    cost.set_xlabel("tokens per sample")
    cost.set_ylabel("training step (ms, median)")
    cost.set_title("cost: one training step")
    score.set_xscale("log", base=2)
    score.set_xlabel("tokens per sample")
    score.set_ylabel(f"test {table[0]['metric']} (%), 95% CI")
    score.set_title("accuracy at the same budget")
    for ax in (cost, score):
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_sweep_outputs(results, out: Path, command: str) -> list[Path]:
    """results.csv (every run, with size and tokens), report.md and scale.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_sweep_csv(results, out / "results.csv")
    write_sweep_report(results, out / "report.md", command)
    plot = write_scale_plot(results, out / "scale.png")
    return [out / "results.csv", out / "report.md"] + ([plot] if plot else [])
