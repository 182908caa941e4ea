"""``ndformer train``, ``evaluate`` and ``arena``: registered on the app built in ``cli.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cli_examples import EXAMPLES_ARENA, EXAMPLES_EVALUATE, EXAMPLES_PREDICT, EXAMPLES_TRAIN


def _overrides(text: str | None, fail) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        fail(f"--overrides must be a JSON object, e.g. '{{\"depth\": 4}}': {error}")
    if not isinstance(value, dict):
        fail(f"--overrides must be a JSON object, got {text!r}")
    return value


def _print_class_ious(console, score, names: list[str] | None) -> None:
    """The IoU of every class, after an mIoU."""
    if score is None or score.per_class is None:
        return
    names = names or [str(c) for c in range(len(score.per_class))]
    ious = (
        f"{n} {'-' if v is None else f'{100 * v:.1f}'}"
        for n, v in zip(names, score.per_class, strict=True)
    )
    console.print("IoU per class (%): " + ", ".join(ious))


def _interrupted(out: Path) -> str:
    """What Ctrl-C during ``train`` leaves behind."""
    from .train.checkpoint import last_checkpoint

    step = last_checkpoint(out)
    if step is None:
        return f"interrupted before the first checkpoint; nothing to resume in {out}"
    return (
        f"interrupted; the checkpoint of step {step} is intact: continue with --resume --out {out}"
    )


def register(app: typer.Typer, console, fail) -> None:
    """Add the training commands to ``app``."""

    @app.command(epilog=EXAMPLES_TRAIN)
    def train(
        out: Annotated[Path, typer.Option(help="Run directory (checkpoints, metrics).")],
        task: Annotated[str | None, typer.Option(help="A task name, e.g. digits.")] = None,
        data: Annotated[
            Path | None, typer.Option(help="User data: image folder, .npz or NIfTI .csv.")
        ] = None,
        model: Annotated[
            str | None,
            typer.Option(
                help="Model name (see Python list_models()). [default: vit-tiny (volt-tiny"
                " for point clouds), 4 blocks of width 128 under 5,000 training samples,"
                " 6 blocks under 50,000]"
            ),
        ] = None,
        pattern: Annotated[
            list[str] | None,
            typer.Option(
                help="Pattern spec(s), cycled over the blocks. [default: full attention up to"
                " 6 x width tokens (its pairs then cost at most the dense layers), else"
                " neighborhood(7) in 2-D, (5) in 3-D]"
            ),
        ] = None,
        patch: Annotated[
            int | None,
            typer.Option(
                help="Patch size. [default: the task's; for --data the smallest with at most"
                " 256 tokens (128 in 3-D)]"
            ),
        ] = None,
        overrides: Annotated[
            str | None, typer.Option(help="Model config overrides as JSON, e.g. '{\"depth\": 4}'.")
        ] = None,
        steps: Annotated[
            int | None,
            typer.Option(help="Optimizer steps. [default: --epochs of the training set]"),
        ] = None,
        epochs: Annotated[
            int | None,
            typer.Option(
                help="Passes over the training set. [default: 120 under 5,000 samples, 30 under"
                " 50,000, else 10]"
            ),
        ] = None,
        time_budget: Annotated[
            float | None,
            typer.Option(
                metavar="MINUTES",
                help="Fit the steps to this wall time, from the measured step time (the"
                " learning-rate schedule follows).",
            ),
        ] = None,
        patience: Annotated[
            int | None,
            typer.Option(
                help="Stop after this many validations without a new best; end with the best."
            ),
        ] = None,
        batch_size: Annotated[
            int | None,
            typer.Option(help="Samples per step. [default: 64; 4 scenes for point clouds]"),
        ] = None,
        lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1e-3,
        weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.05,
        seed: Annotated[int, typer.Option(help="Seed of init, batches and augmentation.")] = 0,
        bf16: Annotated[bool, typer.Option(help="bfloat16 autocast.")] = False,
        teacher: Annotated[
            str | None, typer.Option(help="'conv' (train an N-D CNN first) or a run dir.")
        ] = None,
        teacher_steps: Annotated[int | None, typer.Option(help="Steps for --teacher conv.")] = None,
        eval_every: Annotated[int, typer.Option(help="Validate + checkpoint every N.")] = 0,
        tensorboard: Annotated[bool, typer.Option(help="Also log to out/tensorboard.")] = False,
        dry_run: Annotated[
            bool, typer.Option(help="Print the plan (choices, time, memory) and exit.")
        ] = False,
        resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    ) -> None:
        """Train a model on a task or on your data; checkpoints are written atomically.

        Before the first step it prints the plan: every setting (chosen from the data
        where not given), and the whole run's estimated time and peak memory from a few
        measured steps; it refuses a run that would not fit in memory.
        """
        from ._io import check_output_dir
        from .train import TrainConfig, fit, read_run, resolve_data
        from .train.checkpoint import holds_a_run
        from .train.defaults import choose_defaults
        from .train.plan import plan_run

        if time_budget is not None and not 0 < time_budget < float("inf"):
            fail(f"--time-budget must be > 0 minutes, got {time_budget:g}")
        if time_budget is not None and steps is not None:
            fail("give --steps or --time-budget, not both")
        check_output_dir(out, create=False)
        if not resume and (problem := holds_a_run(out)) is not None:
            fail(problem)  # before the plan measures anything
        source = TrainConfig(task=task, data=None if data is None else str(data), seed=seed)
        dataset = resolve_data(source, progress=True)
        fields, choices = choose_defaults(
            dataset, model=model, patch=patch,
            pattern=None if not pattern else (pattern[0] if len(pattern) == 1 else pattern),
            overrides=_overrides(overrides, fail), steps=steps, epochs=epochs,
            batch_size=batch_size, user_data=data is not None,
        )  # fmt: skip
        if resume and time_budget is not None and (out / "run.json").exists():
            fields["steps"] = read_run(out)["train"]["steps"]  # the fitted steps of the run
            time_budget = None
        config = TrainConfig(
            task=task, data=source.data, **fields, lr=lr, weight_decay=weight_decay, seed=seed,
            amp=bf16, teacher=teacher, teacher_steps=teacher_steps, eval_every=eval_every,
            tensorboard=tensorboard, patience=patience,
        )  # fmt: skip
        plan = None
        if not resume:
            config, plan = plan_run(config, dataset, choices, time_budget=time_budget)
            for line in plan.lines():
                console.print(line)
            if teacher == "conv":
                console.print("  note     --teacher conv trains its network first (not counted)")
        if dry_run:
            console.print("dry run: nothing trained")
            return
        try:
            result = fit(config, out, data=dataset, resume=resume, progress=True, plan=plan)
        except KeyboardInterrupt:
            console.print(_interrupted(out))
            raise typer.Exit(code=130) from None
        info = read_run(out)
        console.print(f"test {result.score}  ({result.samples_per_s:.0f} train samples/s)")
        _print_class_ious(console, result.score, info["data"].get("class_names"))
        if result.best_step is not None:
            stop = f"; stopped early at step {result.steps}" if info.get("stopped_early") else ""
            console.print(f"weights of step {result.best_step}, the best validation"
                          f" ({100 * info['best_val']:.1f}%){stop}")  # fmt: skip
        if plan is not None and info.get("seconds"):
            console.print(f"took {info['seconds'] / 60:.1f} min (planned"
                          f" {plan.seconds / 60:.1f})")  # fmt: skip
        console.print(f"run directory: {out}  (ndformer evaluate {out})")

    @app.command(epilog=EXAMPLES_EVALUATE)
    def evaluate(
        run: Annotated[Path, typer.Argument(help="A run directory from ndformer train.")],
        task: Annotated[str | None, typer.Option(help="Evaluate on this task instead.")] = None,
        data: Annotated[Path | None, typer.Option(help="Evaluate on these files instead.")] = None,
        split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    ) -> None:
        """Accuracy (or mIoU) of a trained run with its 95% confidence interval."""
        from .train import TrainConfig, evaluate_model, load, read_run, resolve_data
        from .train.data import check_model_fits

        if split not in ("train", "val", "test"):
            fail(f"--split must be train, val or test, got {split!r}")
        info = read_run(run)
        saved = info["train"]
        if task or data:
            saved = dict(saved, task=task, data=None if data is None else str(data))
        dataset = resolve_data(TrainConfig(**saved))
        model = load(run)
        check_model_fits(model, dataset)
        score = evaluate_model(model, dataset, split)
        console.print(f"{dataset.name} {split}: {score}")
        _print_class_ious(console, score, dataset.class_names)

    @app.command(epilog=EXAMPLES_PREDICT)
    def predict(
        run: Annotated[Path, typer.Argument(help="A run directory of a point model.")],
        scene: Annotated[Path, typer.Argument(help="A point cloud: .ply or .npz (xyz, rgb).")],
        out: Annotated[Path, typer.Option(help="Where to write the labels: .ply or .npz.")],
        plot: Annotated[
            Path | None, typer.Option(help="Also draw the labels from above into this PNG.")
        ] = None,
    ) -> None:
        """Segment a point cloud with a trained point model; writes per-point labels."""
        from .train import segment_file

        result = segment_file(run, scene, out, plot)
        counts = ", ".join(f"{name} {n}" for name, n in result["counts"].items())
        console.print(f"{result['points']} points: {counts}")
        if "miou" in result:
            console.print(f"mIoU against the file's labels: {100 * result['miou']:.1f}%")
        console.print(f"wrote {out}" + (f" and {plot}" if plot else ""))

    def _sweep(config, sizes: list[int], resume: bool, on_entry) -> None:
        import shlex
        import sys

        from .arena.sweep import run_sweep, sweep_table
        from .arena.sweep_report import crossovers, write_sweep_outputs

        def on_size(size: int, task: str) -> None:
            console.print(f"size {size}: {task}")

        results = run_sweep(config, sizes, on_entry, on_size, resume=resume)
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
        overrides: Annotated[str | None, typer.Option(help="Model overrides as JSON.")] = None,
        steps: Annotated[
            int | None,
            typer.Option(
                help="Steps per run: every entry trains steps x batch samples. [default: 1200]"
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
        out: Annotated[Path, typer.Option(help="Output folder.")] = Path("arena-results"),
    ) -> None:
        """Train one model with each pattern under the same budget; report accuracy vs cost.

        With no arguments: the default arena (pathfinder2d-16, four patterns, about
        12 minutes on 2 CPU cores). Writes report.md, results.csv and pareto.png.
        """
        from .arena import ArenaConfig, config_dict, run_arena
        from .arena.report import summarize, write_outputs
        from .tasks import load_data, load_task

        config = ArenaConfig(
            seeds=seeds,
            out=out,
            token_merging=list(token_merging or []),
            keep_rates=list(keep_rate or []),
        )
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
            _sweep(config, list(sizes), resume, on_entry)
            return
        summary_data = load_data(config.data) if config.data else load_task(config.task)
        console.print(summary_data.summary())

        rows, notes = run_arena(config, on_entry, resume=resume)
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
