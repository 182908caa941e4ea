"""The ``ndformer`` command line: a thin layer over the Python API.

Needs the ``all`` extra (typer, rich, matplotlib): ``pip install 'ndformer[all]'``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

try:
    import typer
    from rich.console import Console
except ImportError:  # pragma: no cover - exercised only without the extra
    typer = None

EXAMPLES_SHOW = """
Examples:

  ndformer show "neighborhood(7, dilation=2)" --shape 32x32 --query 5,5 --out mask.png

  ndformer show "window(8, shift=4)" --shape 16x16x16 --out density.png   (keys per query)

  ndformer show "headsplit(stripe(0, 4), stripe(1, 4))" --shape 24x24 --query 3,20 --head 1
"""

EXAMPLES_BENCH = """
Examples:

  ndformer bench --quick

  ndformer bench --patterns "window(8)" "neighborhood(7)" --shapes 128x128 32x32x32 --backward

  ndformer bench --sweep --patterns "neighborhood(3)" "window(8)" --heads 2 --head-dim 16

  ndformer bench --points 10000 100000 1000000 --patterns "serialized('hilbert', group=64)"
"""


EXAMPLES_INFO = """
Examples:

  ndformer info

  ndformer info --device cuda
"""

EXAMPLES_PATTERNS = """
Examples:

  ndformer patterns            (then e.g. ndformer show "stripe(1, 4)" --shape 16x16)
"""


#: Suffixes ``show --out`` can write (matplotlib's raster and vector formats).
PICTURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def picture_path(out: Path) -> Path:
    """``--out mask`` -> ``mask.png``; a ``UsageError`` for a suffix matplotlib cannot write."""
    from .errors import UsageError

    if not out.suffix:
        return out.with_suffix(".png")
    if out.suffix.lower() not in PICTURE_SUFFIXES:
        raise UsageError(
            f"--out {str(out)!r}: cannot draw a {out.suffix} file; use one of"
            f" {', '.join(PICTURE_SUFFIXES)}"
        )
    return out


def _version(value: bool) -> None:
    if value:
        from ._version import __version__

        typer.echo(f"ndformer {__version__}")
        raise typer.Exit()


def build_app():
    from .cli_errors import DEBUG_ENV, fail, guarded

    app = typer.Typer(
        help="ndformer: exact efficient attention patterns for N-D data.",
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
    )
    # markup=False: messages and data names print as they are ("[n, 3]" survives).
    console = Console(highlight=False, markup=False)

    @app.callback()
    def options(
        debug: Annotated[
            bool, typer.Option(help="Show the full traceback of errors (or NDFORMER_DEBUG=1).")
        ] = False,
        version: Annotated[
            bool,
            typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
        ] = False,
    ) -> None:
        """ndformer: exact efficient attention patterns for N-D data."""
        import os

        if debug:
            os.environ[DEBUG_ENV] = "1"

    @app.command(epilog=EXAMPLES_SHOW)
    def show(
        spec: Annotated[
            str, typer.Argument(help='Pattern spec, e.g. "neighborhood(7, dilation=2)".')
        ],
        shape: Annotated[
            str, typer.Option(help="Grid shape, e.g. 64, 32x32 or 16x16x16.")
        ] = "32x32",
        query: Annotated[
            str | None,
            typer.Option(help="Query coordinates, e.g. 5,5. Without it: keys per query."),
        ] = None,
        head: Annotated[
            int, typer.Option(help="Head to show, for patterns that differ between heads.")
        ] = 0,
        heads: Annotated[
            int | None,
            typer.Option(help="Number of heads (default: the fewest the pattern's splits allow)."),
        ] = None,
        out: Annotated[Path | None, typer.Option(help="Write a PNG picture here.")] = None,
    ) -> None:
        """See which keys a query attends to (or how many keys each query sees).

        Prints keys per query and density; with --out draws the grid (3-D and 4-D
        grids as 2-D slices). A small 1-D or 2-D slice is also drawn as text.
        """
        from ._io import atomic_write, check_output_dir
        from .viz import parse_shape, pattern_view, plot_pattern

        out = None if out is None else picture_path(out)
        if out is not None and out.is_dir():
            fail(f"--out {str(out)!r} is a folder; give a file name such as mask.png")
        view = pattern_view(spec, parse_shape(shape), query=query, head=head, heads=heads)
        console.print(view.summary())
        picture = view.text()
        if picture is not None:
            console.print(picture)
        if out is not None:
            fig = plot_pattern(view)
            check_output_dir(out.parent)
            fmt = out.suffix.lstrip(".").lower()
            atomic_write(out, lambda h: fig.savefig(h, format=fmt, dpi=120, bbox_inches="tight"))
            console.print(f"wrote {out}")

    @app.command(epilog=EXAMPLES_BENCH)
    def bench(
        patterns: Annotated[
            list[str] | None,
            typer.Option(help="Pattern specs (several after one flag). Default: a standard set."),
        ] = None,
        shapes: Annotated[
            list[str] | None,
            typer.Option(
                help="Grid shapes, e.g. 64x64 16x16x16. Default: 64x64 128x128 16^3 32^3"
                " (24^3 with --quick)."
            ),
        ] = None,
        points: Annotated[
            list[int] | None,
            typer.Option(
                help="Also generated 3-D point scenes of these many occupied voxels"
                " (sparse Points; e.g. 10000 100000 1000000)."
            ),
        ] = None,
        heads: Annotated[int, typer.Option(help="Attention heads.")] = 4,
        head_dim: Annotated[int, typer.Option(help="Channels per head.")] = 32,
        batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
        dtype: Annotated[
            str, typer.Option(help="float32, float64, bfloat16 or float16.")
        ] = "float32",
        device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
        backward: Annotated[bool, typer.Option(help="Time forward + backward.")] = False,
        backend: Annotated[
            str,
            typer.Option(
                help="attend backend for the mask patterns: auto, tiled, blocksparse, flex"
                " (PyTorch FlexAttention, compiled; CPU: forward only) or native"
                " (ndformer's compiled CPU kernels, forward and backward)."
            ),
        ] = "auto",
        quick: Annotated[
            bool, typer.Option(help="Fewer repeats: a few minutes on 2 cores.")
        ] = False,
        sweep: Annotated[
            bool,
            typer.Option(
                help="Fit time ~ tokens^alpha per pattern over growing sizes (default: 1-D, 2-D"
                " and 3-D from 4096 tokens up; --shapes to choose)."
            ),
        ] = False,
        max_memory: Annotated[
            float, typer.Option(help="Skip dense masked SDPA above this many GiB.")
        ] = 4.0,
        out: Annotated[Path, typer.Option(help="Output folder.")] = Path("bench-results"),
    ) -> None:
        """Measure time, peak memory, exact FLOPs and efficiency of attention patterns.

        Every case runs alone in a fresh worker process. Writes results.csv, report.md,
        time_vs_tokens.png and efficiency.png into --out. Ctrl-C writes what finished.
        """
        from .bench.cli import run_bench_command
        from .bench.runner import BenchConfig
        from .viz import parse_shape

        config = BenchConfig(heads=heads, head_dim=head_dim, batch=batch, dtype=dtype,
                             device=device, backward=backward, quick=quick, sweep=sweep,
                             max_memory_gib=max_memory, backend=backend)  # fmt: skip
        if patterns:
            config.patterns = [parse_pattern_spec(p) for p in patterns]
        if shapes:
            config.shapes = [parse_shape(s) for s in shapes]
        if points:
            config.points = list(points)
            config.shapes = [parse_shape(s) for s in shapes or []]
        config.__post_init__()
        rows = run_bench_command(config, out, console)
        if any(r.note.startswith("not run") for r in rows):
            raise typer.Exit(code=130)  # interrupted: what finished is written

    @app.command(epilog=EXAMPLES_INFO)
    def info(
        device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
        shape: Annotated[
            str, typer.Option(help="Grid shape for the backend table, e.g. 64x64 or 32x32x32.")
        ] = "64x64",
        patterns: Annotated[
            list[str] | None,
            typer.Option(help="Patterns for the backend table. Default: a standard set."),
        ] = None,
    ) -> None:
        """Versions, device, threads, the measured float32 matmul peak, and which backend
        attend takes for each pattern, at inference and in training."""
        from ._checks import check_device
        from .bench.measure import matmul_peak
        from .bench.report import machine_info
        from .viz import parse_shape

        check_device(device)
        grid = parse_shape(shape)
        specs = [parse_pattern_spec(p) for p in patterns or INFO_PATTERNS]
        for key, value in machine_info(device, matmul_peak(device)).items():
            console.print(f"{key:>20}: {value}")
        console.print(backend_table(specs, grid, device))

    from .cli_train import register

    register(app, console, fail)

    @app.command("patterns", epilog=EXAMPLES_PATTERNS)
    def list_patterns_command() -> None:
        """List pattern names usable in spec strings, with their arguments."""
        from .patterns.spec import list_patterns, signature

        for name in list_patterns():
            console.print(signature(name))

    for command in app.registered_commands:
        command.callback = guarded(command.callback)
    return app


#: Patterns of ``ndformer info``'s backend table.
INFO_PATTERNS = (
    "full", "window(8)", "window(8, shift=4)", "neighborhood(7)", "stripe(0, 8)", "axial(0)",
    "causal(0)", "window(8) | axial(0)", "pooled(4)", "linear", "serialized('hilbert', 64)",
    "rotated_sets(8, 36)",
)  # fmt: skip


def backend_table(specs, shape: tuple[int, ...], device: str):
    """A rich table: for each pattern, the backend ``auto`` takes at inference and in
    training on a grid of ``shape`` (float32, 4 heads of 32), and the other backends that
    run it (``ndformer.choice.describe``)."""
    import torch
    from rich.table import Table
    from rich.text import Text

    from .choice import describe

    table = Table(title=f"attend on a {'x'.join(map(str, shape))} grid ({device}, float32)")
    for column in ("pattern", "auto: inference", "auto: training", "also runs it (training)"):
        table.add_column(column)
    for spec in specs:
        row = describe(spec, shape, device=torch.device(device))
        others = [n for n, why in row["training backends"].items()
                  if why is None and n not in str(row["training"])]  # fmt: skip
        table.add_row(*(Text(str(x)) for x in (row["pattern"], row["inference"],
                                                row["training"], ", ".join(others))))  # fmt: skip
    return table


def parse_pattern_spec(spec: str) -> str:
    """Validate a spec (ValueError naming the problem) and return it unchanged."""
    from .patterns import pattern

    pattern(spec)
    return spec


#: Options that take several values after one flag (``--shapes 64x64 32x32x32``).
MULTI_VALUE_OPTIONS = (
    "--patterns",
    "--shapes",
    "--pattern",
    "--token-merging",
    "--keep-rate",
    "--points",
    "--sizes",
    "--models",
)


def expand_multi_value_options(args: list[str]) -> list[str]:
    """``--shapes A B`` -> ``--shapes A --shapes B`` (click options take one value each)."""
    expanded: list[str] = []
    current = None
    for arg in args:
        if arg.startswith("-"):
            current = arg if arg in MULTI_VALUE_OPTIONS else None
            expanded.append(arg)
        elif current is not None and expanded[-1] != current:
            expanded += [current, arg]
        else:
            expanded.append(arg)
    return expanded


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``ndformer`` console script."""
    if typer is None:
        sys.exit("ndformer's command line needs its extra: pip install 'ndformer[all]'")
    args = sys.argv[1:] if args is None else args
    from . import cli_train

    cli_train.ARGV[:] = args  # for train --nproc, which relaunches it under torchrun
    build_app()(args=expand_multi_value_options(args), prog_name="ndformer")


if __name__ == "__main__":
    main()
