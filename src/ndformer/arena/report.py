"""Arena outputs: results.csv, report.md and the Pareto plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..bench.report import machine_info
from ..train.metrics import accuracy_score

COLUMNS = [
    "pattern",
    "seed",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n_test",
    "steps",
    "train_samples_per_s",
    "inference_ms",
    "inference_batch",
    "peak_mib",
    "attention_gflop",
    "params",
    "seconds",
    "error",
]


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    score = row.get("score") or {}
    return dict(
        pattern=row["pattern"],
        seed=row["seed"],
        metric=score.get("metric", ""),
        value=score.get("value", ""),
        ci_low=score.get("low", ""),
        ci_high=score.get("high", ""),
        n_test=score.get("n", ""),
        steps=row.get("steps", ""),
        train_samples_per_s=row.get("samples_per_s", ""),
        inference_ms=row.get("inference_ms", ""),
        inference_batch=row.get("inference_batch", ""),
        peak_mib=row.get("peak_mib", ""),
        attention_gflop=row.get("attention_gflop", ""),
        params=row.get("params", ""),
        seconds=row.get("seconds", ""),
        error=row.get("error", ""),
    )


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per pattern: seeds pooled (accuracy: Wilson CI over all test predictions;
    mIoU: mean of the seeds' values and CI bounds), speeds and memory averaged."""
    out = []
    for spec in dict.fromkeys(r["pattern"] for r in rows):
        done = [r for r in rows if r["pattern"] == spec and "score" in r]
        if not done:
            errors = [r.get("error", "") for r in rows if r["pattern"] == spec]
            out.append(dict(pattern=spec, error="; ".join(errors)))
            continue
        scores = [r["score"] for r in done]
        n = sum(s["n"] for s in scores)
        if scores[0]["metric"] == "accuracy":
            pooled = accuracy_score(round(sum(s["value"] * s["n"] for s in scores)), n)
            value, low, high = pooled.value, pooled.low, pooled.high
        else:
            value = sum(s["value"] for s in scores) / len(scores)
            low = sum(s["low"] for s in scores) / len(scores)
            high = sum(s["high"] for s in scores) / len(scores)

        def mean(key: str, runs=done) -> float:
            return sum(r[key] for r in runs) / len(runs)

        out.append(
            dict(
                pattern=spec,
                metric=scores[0]["metric"],
                value=value,
                low=low,
                high=high,
                seeds=len(done),
                steps=mean("steps"),
                samples_per_s=mean("samples_per_s"),
                inference_ms=mean("inference_ms"),
                inference_batch=done[0]["inference_batch"],
                peak_mib=mean("peak_mib"),
                attention_gflop=mean("attention_gflop"),
                params=done[0]["params"],
            )
        )
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(_flat(r) for r in rows)


def write_report(
    rows: list[dict[str, Any]], settings: dict[str, Any], path: Path, task_summary: str
) -> None:
    summary = summarize(rows)
    ok = [s for s in summary if "value" in s]
    lines = ["# ndformer arena", ""]
    lines += [f"Task: {task_summary}", ""]
    budget = (
        f"{settings['minutes']} minutes in all (split evenly, converted to steps per run)"
        if settings.get("minutes")
        else f"{settings['steps']} steps per run"
    )
    lines += [
        f"Model `{settings['model']}` with overrides `{json.dumps(settings['overrides'])}`;"
        f" budget {budget}; batch {settings['batch_size']}, lr {settings['lr']};"
        f" seeds {settings['seeds']}.",
        "",
        "Metric on the held-out test split with its 95% confidence interval (accuracy: Wilson"
        " interval over all test predictions of all seeds; mIoU: bootstrap). Train samples/s is"
        " measured over the training steps only; inference is the median forward time of one"
        " test batch; peak MiB is how far the training process's resident high-water mark rose"
        " during training (above what it held before: the data and the library); attention"
        " GFLOP counts 4 * attended pairs * head_dim over heads and layers for one sample,"
        " with pairs counted exactly from each pattern.",
        "",
        "| pattern | metric (95% CI) | steps | train samples/s | inference ms"
        " | peak MiB | attention GFLOP/sample | params |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted(ok, key=lambda s: -s["value"]):
        lines.append(
            f"| `{s['pattern']}` | {100 * s['value']:.1f}% ({100 * s['low']:.1f}-"
            f"{100 * s['high']:.1f}) | {s['steps']:.0f} | {s['samples_per_s']:.0f}"
            f" | {s['inference_ms']:.1f} (batch {s['inference_batch']}) | {s['peak_mib']:.0f}"
            f" | {s['attention_gflop']:.4f} | {s['params'] / 1e6:.2f} M |"
        )
    for s in summary:
        if "value" not in s:
            lines.append(f"| `{s['pattern']}` | failed: {s['error']} | | | | | | |")
    if ok:
        lines += ["", "![accuracy vs throughput](pareto.png)", ""]
    lines += ["## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine_info().items()]
    lines += ["", "Reproduce: `ndformer arena` with the settings above."]
    path.write_text("\n".join(lines) + "\n")


def write_pareto(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Metric (with CI bars) against inference throughput; marker area ~ peak memory."""
    summary = [s for s in summarize(rows) if "value" in s]
    if not summary:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    biggest = max(s["peak_mib"] for s in summary) or 1.0
    for i, s in enumerate(summary):
        throughput = 1e3 * s["inference_batch"] / s["inference_ms"]
        color = plt.cm.tab10(i % 10)
        ax.errorbar(
            throughput,
            100 * s["value"],
            yerr=[[100 * (s["value"] - s["low"])], [100 * (s["high"] - s["value"])]],
            fmt="none",
            ecolor=color,
            capsize=4,
        )
        ax.scatter(
            throughput,
            100 * s["value"],
            s=60 + 600 * s["peak_mib"] / biggest,
            color=color,
            alpha=0.7,
            label=f"{s['pattern']} ({s['peak_mib']:.0f} MiB)",
        )
    ax.set_xlabel("inference throughput (samples/s)")
    ax.set_ylabel(f"test {summary[0]['metric']} (%), 95% CI")
    ax.set_title("arena: accuracy vs throughput (marker area ~ peak memory)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(
    rows: list[dict[str, Any]], settings: dict[str, Any], out: Path, task_summary: str
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    write_report(rows, settings, out / "report.md", task_summary)
    pareto = write_pareto(rows, out / "pareto.png")
    paths = [out / "results.csv", out / "report.md"]
    return paths + ([pareto] if pareto else [])
