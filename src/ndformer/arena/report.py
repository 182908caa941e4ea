"""Arena outputs: results.csv, report.md and the Pareto plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..bench.report import machine_info
from ..train.metrics import accuracy_score
from .runner import COST_ROUNDS
from .stats import indistinguishable, seed_interval

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
    "train_step_ms",
    "train_step_iqr_ms",
    "inference_iqr_ms",
    "train_flops",
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
        train_step_ms=row.get("train_step_ms", ""),
        train_step_iqr_ms=row.get("train_step_iqr_ms", ""),
        inference_iqr_ms=row.get("inference_iqr_ms", ""),
        train_flops=row.get("train_flops", ""),
    )


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per pattern. With several seeds: the mean over seeds and its 95% t
    interval (seed variance); with one: its test-set interval (accuracy: Wilson; mIoU:
    bootstrap). ``test_low`` / ``test_high``: the test-set interval pooled over seeds.
    Costs are averaged over seeds."""
    out = []
    for spec in dict.fromkeys(r["pattern"] for r in rows):
        done = [r for r in rows if r["pattern"] == spec and "score" in r]
        if not done:
            errors = [r.get("error", "") for r in rows if r["pattern"] == spec]
            out.append(dict(pattern=spec, error="; ".join(errors)))
            continue
        scores = [s["score"] for s in done]
        if scores[0]["metric"] == "accuracy":
            n = sum(s["n"] for s in scores)
            pooled = accuracy_score(round(sum(s["value"] * s["n"] for s in scores)), n)
            test_low, test_high = pooled.low, pooled.high
        else:
            test_low = sum(s["low"] for s in scores) / len(scores)
            test_high = sum(s["high"] for s in scores) / len(scores)
        if len(scores) >= 2:
            value, low, high = seed_interval([s["value"] for s in scores])
        else:
            value, low, high = scores[0]["value"], scores[0]["low"], scores[0]["high"]

        def mean(key: str, runs=done) -> float | None:
            values = [r[key] for r in runs if r.get(key) is not None]
            return sum(values) / len(values) if values else None

        out.append(
            dict(
                pattern=spec,
                metric=scores[0]["metric"],
                value=value,
                low=low,
                high=high,
                test_low=test_low,
                test_high=test_high,
                seeds=len(done),
                steps=mean("steps"),
                samples_per_s=mean("samples_per_s"),
                train_step_ms=mean("train_step_ms"),
                train_step_iqr_ms=mean("train_step_iqr_ms"),
                inference_ms=mean("inference_ms"),
                inference_iqr_ms=mean("inference_iqr_ms"),
                inference_batch=done[0].get("inference_batch"),
                peak_mib=mean("peak_mib"),
                attention_gflop=mean("attention_gflop"),
                train_flops=mean("train_flops"),
                params=done[0]["params"],
            )
        )
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(_flat(r) for r in rows)


def _recipe_text(settings: dict[str, Any]) -> str:
    """The recipe every entry trained with, and what its ablation entries switch off."""
    from .recipes import RECIPES

    recipe = settings.get("recipe")
    if not recipe:
        return ""
    pieces = ", ".join(f"{p.key}={p.on}" for p in RECIPES[recipe].values())
    text = f" Recipe `{recipe}` for every entry ({pieces})"
    if settings.get("ablate"):
        text += ("; an entry `P - piece` trains with that piece off, `P (plain)` with every"
                 " piece off")  # fmt: skip
    return text + "."


def _threads_text(settings: dict[str, Any], notes: dict[str, Any]) -> str:
    """Threads per entry and entries at a time (the first decides the floats, the second
    only the wall time)."""
    threads = settings.get("threads")
    if threads is None:
        return ""
    jobs = notes.get("jobs")
    at_once = f", {jobs} at a time" if jobs else ""
    return (f" Every entry trained on {threads} torch thread{'s' if threads > 1 else ''}"
            f"{at_once} (the results do not depend on how many at a time).")  # fmt: skip


def _budget_text(settings: dict[str, Any], notes: dict[str, Any]) -> str:
    budget = settings.get("budget", "samples")
    if budget == "flops":
        return (f"the same training FLOPs for every entry: {settings['flops']:.3g} (steps ="
                " floor(budget / FLOPs per step), so every entry is within one step of it;"
                " FLOPs per step = batch x (3 x dense-layer forward + 3.5 x attention forward)"
                ", counted from the model)")  # fmt: skip
    if budget == "minutes":
        return (f"{settings['minutes']} minutes of training in all, split evenly and converted"
                " into steps from the entries' step times measured in interleaved rounds before"
                " training: **the step counts depend on this machine and its load**")  # fmt: skip
    samples = settings["steps"] * settings["batch_size"]
    return (
        f"the same {samples:,} training samples for every entry ({settings['steps']} steps"
        f" of {settings['batch_size']}): deterministic, independent of the machine's load"
        " (another instruction set, e.g. AVX-512 against AVX2, sums in another order)"
    )


def _contention_text(notes: dict[str, Any]) -> list[str]:
    c = notes.get("contention")
    if not c:
        return ["Costs were not measured: " + notes.get("cost_error", "no finished entries")]
    figures = (f"the probe matmul's median round took {c['probe_slowdown']:.2f}x its fastest,"
               f" and the process got {100 * c['cpu_share']:.0f}% of its {c['threads']}"
               " threads' CPU time")  # fmt: skip
    if c["loaded"]:
        return [f"**Measured under load**: {figures}. Other work competed for the cores; the"
                " cost figures are inflated (by roughly the probe's slowdown or the lost CPU"
                " share) and their ranking is less certain. Accuracies and steps are not"
                " affected."]  # fmt: skip
    return [f"The machine was quiet while the costs were measured: {figures}."]


def write_report(
    rows: list[dict[str, Any]],
    settings: dict[str, Any],
    path: Path,
    task_summary: str,
    notes: dict[str, Any] | None = None,
) -> None:
    notes = notes or {}
    summary = summarize(rows)
    ok = [s for s in summary if "value" in s]
    seeds = settings["seeds"]
    lines = ["# ndformer arena", ""]
    lines += [f"Task: {task_summary}", ""]
    lines += [
        f"Model `{settings['model']}` with overrides `{json.dumps(settings['overrides'])}`;"
        f" budget: {_budget_text(settings, notes)}; lr {settings['lr']}; seeds {seeds}."
        + _threads_text(settings, notes)
        + _recipe_text(settings),
        "",
        "Metric on the held-out test split: "
        + ("the mean over seeds with its 95% t interval over the seeds (seed variance); the"
           " test-set interval pooled over seeds in the next column." if seeds > 1 else
           "95% confidence interval over the test set (accuracy: Wilson; mIoU: bootstrap).")
        + " Costs are measured after training, apart from it: every entry's training step"
        f" (forward, backward, AdamW) and inference batch timed in {COST_ROUNDS} interleaved"
        " rounds (medians, IQR in brackets), so a slow period hits every entry alike. Peak"
        " MiB is how far the training process's resident high-water mark rose during"
        " training; attention GFLOP counts 4 x attended pairs x head_dim over heads and layers"
        " for one sample, with pairs counted exactly from each pattern.",
        "",
    ]  # fmt: skip
    lines += [*_contention_text(notes), ""]
    if notes.get("seconds"):
        planned = (notes.get("plan") or {}).get("seconds")
        lines += [f"The arena took {notes['seconds'] / 60:.1f} minutes"
                  + (f" (its plan said {planned / 60:.1f})." if planned else "."), ""]  # fmt: skip
    seed_col = " | test-set CI" if seeds > 1 else ""
    lines += [
        f"| pattern | metric (95% CI){seed_col} | steps | train step ms | train samples/s"
        " | inference ms | peak MiB | attention GFLOP/sample | params |",
        "|---|---|" + ("---|" if seeds > 1 else "") + "---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted(ok, key=lambda s: -s["value"]):
        test = f" | {100 * s['test_low']:.1f}-{100 * s['test_high']:.1f}" if seeds > 1 else ""
        step = _cost(s, "train_step_ms", "train_step_iqr_ms")
        rate = "" if s["samples_per_s"] is None else f"{s['samples_per_s']:.0f}"
        infer = _cost(s, "inference_ms", "inference_iqr_ms")
        batch = f" (batch {s['inference_batch']})" if s["inference_batch"] else ""
        lines.append(
            f"| `{s['pattern']}` | {100 * s['value']:.1f}% ({100 * s['low']:.1f}-"
            f"{100 * s['high']:.1f}){test} | {s['steps']:.0f} | {step} | {rate}"
            f" | {infer}{batch} | {s['peak_mib']:.0f}"
            f" | {s['attention_gflop']:.4f} | {s['params'] / 1e6:.2f} M |"
        )
    for s in summary:
        if "value" not in s:
            lines.append(f"| `{s['pattern']}` | failed: {s['error']} | | | | | | | |")
    tied = indistinguishable(summary)
    if tied:
        best = max(ok, key=lambda s: s["value"])["pattern"]
        lines += ["", f"Not distinguishable from `{best}` at this budget (intervals overlap): "
                  + ", ".join(f"`{t}`" for t in tied) + "."]  # fmt: skip
    if ok:
        lines += ["", "![accuracy vs throughput](pareto.png)", ""]
    lines += ["## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine_info().items()]
    lines += ["", "Reproduce: `ndformer arena` with the settings above."]
    path.write_text("\n".join(lines) + "\n")


def _cost(s: dict[str, Any], key: str, iqr: str) -> str:
    if s.get(key) is None:
        return ""
    return f"{s[key]:.1f} ({s[iqr]:.1f})"


def write_pareto(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Metric (with CI bars) against inference throughput; marker area ~ peak memory."""
    summary = [s for s in summarize(rows) if "value" in s and s.get("inference_ms")]
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
    rows: list[dict[str, Any]],
    settings: dict[str, Any],
    out: Path,
    task_summary: str,
    notes: dict[str, Any] | None = None,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    write_report(rows, settings, out / "report.md", task_summary, notes)
    pareto = write_pareto(rows, out / "pareto.png")
    paths = [out / "results.csv", out / "report.md"]
    return paths + ([pareto] if pareto else [])
