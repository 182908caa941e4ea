"""``ndformer arena`` (and its ``--sizes`` sweep): registered on the app built in ``cli.py``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .cli_examples import EXAMPLES_ARENA
from .cli_train import _overrides


def register_arena(app: typer.Typer, console, fail) -> None:
    """Add the ``arena`` command to ``app``."""

    def _print_lines(lines: list[str]) -> None:
        for line in lines:
            console.print(line, highlight=False)

    def _took(started: float, notes: dict) -> None:
        planned = (notes.get("plan") or {}).get("seconds")
        took = f"took {(time.perf_counter() - started) / 60:.1f} min"
        console.print(took + (f" (planned {planned / 60:.1f})" if planned else ""))

    def _sweep(config, sizes: list[int], resume: bool, on_entry, dry_run: bool) -> None:
        import shlex
        import sys

        from .arena.sweep import run_sweep, sweep_table
        from .arena.sweep_report import crossovers, write_sweep_outputs

        def on_size(size: int, task: str) -> None:
            console.print(f"size {size}: {task}")

        results = run_sweep(config, sizes, on_entry, on_size, resume, _print_lines, dry_run)
        if dry_run:
            return
        command = "ndformer " + shlex.join(sys.argv[1:])
        paths = write_sweep_outputs(results, config.out, command)
        for pattern, text in crossovers(sweep_table(results)).items():
            console.print(f"{pattern}: {text}")
        if len(results) < len(sizes):
            console.print(f"stopped after {len(results)} of {len(sizes)} sizes (--resume goes on)")
        console.print("wrote " + ", ".join(str(p) for p in paths))

    @app.command(epilog=EXAMPLES_ARENA)
    def arena(
        task: Annotated[str | None, typer.Option(help="Task name.")] = None,
        data: Annotated[Path | None, typer.Option(help="User data instead of a task.")] = None,
        patterns: Annotated[
            list[str] | None, typer.Option(help="Pattern specs (several after one flag).")
        ] = None,
        model: Annotated[str | None, typer.Option(help="Model name.")] = None,
        models: Annotated[
            list[str] | None,
            typer.Option(
                help="Also train these models at their own sizes and attention"
                " (segformer3d-tiny, conv-tiny; voxconv-tiny for point scenes)."
            ),
        ] = None,
        overrides: Annotated[str | None, typer.Option(help="Model overrides as JSON.")] = None,
        steps: Annotated[
            int | None,
            typer.Option(
                help="Steps per run: every entry trains steps x batch samples. [default: 900]"
            ),
        ] = None,
        minutes: Annotated[
            float | None,
            typer.Option(
                help="A wall-clock budget instead: training minutes for the whole"
                " arena, split evenly, converted into steps from measured step"
                " times (so the steps depend on the machine)."
            ),
        ] = None,
        budget: Annotated[
            tuple[str, float] | None,
            typer.Option(
                help="KIND AMOUNT: 'samples N', 'flops X' (every entry trains X"
                " training FLOPs, counted from the model) or 'minutes M'."
            ),
        ] = None,
        resume: Annotated[
            bool, typer.Option(help="Continue an interrupted arena: keep finished entries.")
        ] = False,
        seeds: Annotated[int, typer.Option(help="Runs per pattern.")] = 1,
        batch_size: Annotated[
            int | None, typer.Option(help="Samples (scenes for point data) per step. [default: 64]")
        ] = None,
        token_merging: Annotated[
            list[int] | None,
            typer.Option(help="Also run full attention with ToMe merging R tokens per block."),
        ] = None,
        keep_rate: Annotated[
            list[float] | None,
            typer.Option(help="Also run full attention with EViT keeping this rate of tokens."),
        ] = None,
        sizes: Annotated[
            list[int] | None,
            typer.Option(
                help="The scale axis: the same arena on the task resized to each size"
                " (pathfinder3d-16 at --sizes 16 24 32), one arena per size in"
                " OUT/size-N, and a report of step time and accuracy against tokens."
            ),
        ] = None,
        eval_every: Annotated[
            int, typer.Option(help="Validate every N steps (0: ten times per entry).")
        ] = 0,
        recipe: Annotated[
            str | None,
            typer.Option(
                help="Train every entry with a recipe: volt (Lovász, label"
                " smoothing, OneCycle, EMA, scene mixing, qk-norm, RoPE base 100) or"
                " segformer3d (cross-entropy + soft Dice)."
            ),
        ] = None,
        ablate: Annotated[
            str | None,
            typer.Option(
                help="Comma-separated pieces of --recipe to switch off one at a"
                " time (and all), on the first pattern: lovasz,ema,..."
            ),
        ] = None,
        jobs: Annotated[
            int | None,
            typer.Option(
                help="Entries that train at a time, each in its own process. Changes the"
                " wall time, not the results. [default: as many as the cores hold]"
            ),
        ] = None,
        threads: Annotated[
            int,
            typer.Option(
                help="Torch threads per training entry (fixed, so the results do not"
                " depend on the machine's cores or on --jobs)."
            ),
        ] = 1,
        dry_run: Annotated[
            bool, typer.Option(help="Print the plan (time and memory per entry) and exit.")
        ] = False,
        out: Annotated[Path, typer.Option(help="Output folder.")] = Path("arena-results"),
    ) -> None:
        """Train one model with each pattern under the same budget; report accuracy vs cost.

        With no arguments: the default arena (pathfinder2d-16, four patterns, about
        7 minutes on 2 CPU cores). Writes report.md, results.csv and pareto.png.
        """
        from .arena import ArenaConfig, config_dict, run_arena
        from .arena.report import summarize, write_outputs
        from .tasks import load_data, load_task

        config = ArenaConfig(
            seeds=seeds,
            out=out,
            token_merging=list(token_merging or []),
            keep_rates=list(keep_rate or []),
            models=list(models or []),
            eval_every=eval_every,
            threads=threads,
            jobs=0 if jobs is None else jobs,
        )
        config.recipe = recipe  # checked with the model below
        config.ablate = [p.strip() for p in ablate.split(",") if p.strip()] if ablate else []
        if task is not None or data is not None:
            config.task, config.data = task, None if data is None else str(data)
        if patterns:
            config.patterns = patterns
        if model is not None:
            config.model, config.overrides = model, {}
        if overrides is not None:
            config.overrides = _overrides(overrides, fail)
        if batch_size is not None:
            config.batch_size = batch_size
        if steps is not None:
            config.steps = steps
        if minutes is not None:
            config.budget, config.minutes = "minutes", minutes
        if budget is not None:
            kind, amount = budget
            config.budget = kind
            if kind == "samples":
                if not amount >= config.batch_size:
                    fail(f"--budget samples {amount:g}: at least one batch of {config.batch_size}")
                config.steps = int(amount // config.batch_size)
            elif kind == "flops":
                config.flops = amount
            elif kind == "minutes":
                config.minutes = amount
        config.__post_init__()

        def on_entry(done: int, total: int, spec: str, row: dict) -> None:
            if not row:
                console.print(f"[{done + 1}/{total}] training {spec} ...")
            elif "error" in row:
                console.print(f"  {spec}: failed: {row['error']}")
            else:
                s = row["score"]
                console.print(
                    f"  {spec}: {s['metric']} {100 * s['value']:.1f}%"
                    f" ({100 * s['low']:.1f}-{100 * s['high']:.1f}), {row['steps']} steps,"
                    f" {row['seconds']:.0f} s"
                )

        if sizes:
            _sweep(config, list(sizes), resume, on_entry, dry_run)
            return
        summary_data = load_data(config.data) if config.data else load_task(config.task)
        console.print(summary_data.summary())

        started = time.perf_counter()
        rows, notes = run_arena(config, on_entry, resume, _print_lines, dry_run)
        if dry_run:
            return
        _took(started, notes)
        console.print("measured the costs of every entry in interleaved rounds")
        paths = write_outputs(rows, config_dict(config), out, summary_data.summary(), notes)
        contention = notes.get("contention") or {}
        if contention.get("loaded"):
            console.print(f"note: the costs were measured under load (probe"
                          f" {contention['probe_slowdown']:.2f}x slower, CPU share"
                          f" {100 * contention['cpu_share']:.0f}%)")  # fmt: skip
        for s in summarize(rows):
            if "value" in s:
                console.print(
                    f"{s['pattern']:>24}: {100 * s['value']:.1f}%"
                    f" ({100 * s['low']:.1f}-{100 * s['high']:.1f})"
                )
        console.print("wrote " + ", ".join(str(p) for p in paths))
