"""``ndformer train``, ``evaluate``, ``predict`` (``arena`` is in ``cli_arena``), registered
on the app built in ``cli.py``."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from .cli_examples import EXAMPLES_EVALUATE, EXAMPLES_EXPORT, EXAMPLES_PREDICT, EXAMPLES_TRAIN


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
    """The IoU (after an mIoU) or Dice (after a mean Dice) of every class."""
    if score is None or score.per_class is None:
        return
    names = names or [str(c) for c in range(len(score.per_class))]
    ious = (
        f"{n} {'-' if v is None else f'{100 * v:.1f}'}"
        for n, v in zip(names, score.per_class, strict=True)
    )
    kind = "Dice" if score.metric == "dice" else "IoU"
    console.print(f"{kind} per class (%): " + ", ".join(ious))


@contextmanager
def _progress_bar(console, what: str):
    """A rich progress bar; yields ``advance(done, total)``."""
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _interrupted(out: Path) -> str:
    """What Ctrl-C during ``train`` leaves behind."""
    from .train.checkpoint import last_checkpoint

    step = last_checkpoint(out)
    if step is None:
        return f"interrupted before the first checkpoint; nothing to resume in {out}"
    return (
        f"interrupted; the checkpoint of step {step} is intact: continue with --resume --out {out}"
    )


#: The command line as given (set by ``cli.main``): ``--nproc`` relaunches it under torchrun.
ARGV: list[str] = []


def _launch(nproc: int) -> int:
    """Run this ``ndformer train`` command line under ``torchrun --nproc-per-node nproc``
    (without ``--nproc``); its exit code."""
    import subprocess
    import sys

    args, skip = [], False
    for arg in ARGV:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "ndformer", *args]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(command, env=env, check=False).returncode


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
        schedule: Annotated[
            str, typer.Option(help="Learning-rate schedule: cosine or onecycle (Volt's).")
        ] = "cosine",
        label_smoothing: Annotated[
            float, typer.Option(help="Label smoothing of the cross-entropy (Volt: 0.1).")
        ] = 0.0,
        lovasz: Annotated[
            bool, typer.Option(help="Add the Lovász-softmax loss (per-class IoU surrogate).")
        ] = False,
        dice: Annotated[
            bool, typer.Option(help="Add the soft Dice loss (segmentation; SegFormer3D's).")
        ] = False,
        ema: Annotated[
            float,
            typer.Option(help="Evaluate and keep an average of the weights with this decay."),
        ] = 0.0,
        mix: Annotated[
            float,
            typer.Option(help="Point scenes: probability that two scenes are mixed into one."),
        ] = 0.0,
        instance_aug: Annotated[
            float,
            typer.Option(
                help="Point scenes: probability that each object is turned, flipped,"
                " scaled, shifted or dropped (and colours dropped now and then)."
            ),
        ] = 0.0,
        bf16: Annotated[bool, typer.Option(help="bfloat16 autocast.")] = False,
        teacher: Annotated[
            str | None, typer.Option(help="'conv' (train an N-D CNN first) or a run dir.")
        ] = None,
        teacher_steps: Annotated[int | None, typer.Option(help="Steps for --teacher conv.")] = None,
        distill: Annotated[
            str,
            typer.Option(
                help="soft (the teacher's logits) or hard (a second head on its"
                " labels; volt models)."
            ),
        ] = "soft",
        eval_every: Annotated[int, typer.Option(help="Validate + checkpoint every N.")] = 0,
        tensorboard: Annotated[bool, typer.Option(help="Also log to out/tensorboard.")] = False,
        dry_run: Annotated[
            bool, typer.Option(help="Print the plan (choices, time, memory) and exit.")
        ] = False,
        resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
        nproc: Annotated[
            int,
            typer.Option(
                help="Training processes (data parallel, gloo): launches torchrun"
                " --nproc-per-node N with the same arguments; same result as one process."
            ),
        ] = 1,
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
        from .train.distributed import finish, main_first, world
        from .train.plan import plan_run

        if nproc < 1:
            fail(f"--nproc must be >= 1, got {nproc}")
        if nproc > 1 and "WORLD_SIZE" not in os.environ:
            raise typer.Exit(_launch(nproc))
        where = world()
        if where.parallel and time_budget is not None:
            fail("--time-budget plans one process's steps; with several processes give --steps")
        if time_budget is not None and not 0 < time_budget < float("inf"):
            fail(f"--time-budget must be > 0 minutes, got {time_budget:g}")
        if time_budget is not None and steps is not None:
            fail("give --steps or --time-budget, not both")
        check_output_dir(out, create=False)
        if not resume and (problem := holds_a_run(out)) is not None:
            fail(problem)  # before the plan measures anything
        source = TrainConfig(task=task, data=None if data is None else str(data), seed=seed)
        dataset = main_first(where, lambda: resolve_data(source, progress=where.main))
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
            tensorboard=tensorboard, patience=patience, schedule=schedule,
            label_smoothing=label_smoothing, lovasz=lovasz, dice=dice, ema=ema, mix=mix,
            instance_aug=instance_aug, distill=distill,
        )  # fmt: skip
        plan = None
        if not resume and where.main:
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
        finally:
            finish(where)
        if not where.main:
            return
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
        run: Annotated[Path, typer.Argument(help="A run directory (point or grid segmentation).")],
        source: Annotated[
            Path,
            typer.Argument(help="A point cloud (.ply, .npz with xyz, rgb) or a NIfTI volume."),
        ],
        out: Annotated[
            Path, typer.Option(help="Where to write the labels: .ply / .npz, or .nii(.gz).")
        ],
        plot: Annotated[
            Path | None,
            typer.Option(help="Also draw the labels (PNG): points from above, volume slices."),
        ] = None,
        roi: Annotated[
            int | None,
            typer.Option(help="Volumes: sliding-window size. [default: the training size]"),
        ] = None,
        overlap: Annotated[float, typer.Option(help="Volumes: window overlap in [0, 1).")] = 0.25,
        blend: Annotated[
            str, typer.Option(help="Volumes: constant or gaussian weighting of the windows.")
        ] = "constant",
    ) -> None:
        """Segment a point cloud (per-point labels) or a NIfTI volume (a label map with the
        input's affine, by sliding-window inference) with a trained run."""
        if source.name.lower().endswith((".nii", ".nii.gz")):
            from .train.sliding import predict_volume

            with _progress_bar(console, "windows") as advance:
                result = predict_volume(run, source, out, roi, overlap, blend, advance, plot)
            counts = ", ".join(f"{name} {n}" for name, n in result["counts"].items())
            shape = "x".join(map(str, result["shape"]))
            roi_text = "x".join(map(str, result["roi"]))
            console.print(f"{shape} voxels, {result['windows']} windows of {roi_text}: {counts}")
            console.print(f"wrote {out}" + (f" and {plot}" if plot else ""))
            return
        from .train import segment_file

        result = segment_file(run, source, out, plot)
        counts = ", ".join(f"{name} {n}" for name, n in result["counts"].items())
        console.print(f"{result['points']} points: {counts}")
        if "miou" in result:
            console.print(f"mIoU against the file's labels: {100 * result['miou']:.1f}%")
        console.print(f"wrote {out}" + (f" and {plot}" if plot else ""))

    @app.command("export", epilog=EXAMPLES_EXPORT)
    def export(
        run: Annotated[Path, typer.Argument(help="A run directory (grid or volt model).")],
        out: Annotated[Path, typer.Option(help="The file to write (.pt2 or .onnx).")],
        fmt: Annotated[
            str | None, typer.Option("--format", help="pt2 or onnx (default: from --out).")
        ] = None,
        batch: Annotated[
            int, typer.Option(help="Batch size (scenes for point models) of the traced example.")
        ] = 1,
    ) -> None:
        """Export a trained model for deployment: torch.export (.pt2, ndformer's kernels as
        custom ops; load after `import ndformer`) or ONNX (standard operators only). A
        point model's program takes ndformer.train.export_points.point_inputs(model,
        batch), any number of points."""
        import torch

        from .train import TrainConfig, load, read_run, resolve_data
        from .train.data import make_batch
        from .train.export import export_model

        fmt = fmt or out.suffix.lstrip(".").lower()
        if batch < 1:
            fail(f"--batch must be >= 1, got {batch}")
        model = load(run)
        dataset = resolve_data(TrainConfig(**read_run(run)["train"]))
        example, _ = make_batch(dataset, "test", torch.arange(batch))
        result = export_model(model, example, fmt, out)
        error = result["max_abs_error"]
        check = ("not run: onnxruntime is not installed" if error is None
                 else f"max |difference| from PyTorch {error:.2e}")  # fmt: skip
        ops = ", ".join(result["custom_ops"]) or "none"
        shapes = " ".join(str(s) for s in result["inputs"])
        console.print(f"wrote {out} ({result['bytes'] / 1e6:.1f} MB, {fmt}; traced on"
                      f" {shapes}; ndformer custom ops: {ops}); {check}")  # fmt: skip

    from .cli_arena import register_arena

    register_arena(app, console, fail)
