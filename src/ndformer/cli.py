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


def _fail(console, message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


def build_app():
    app = typer.Typer(
        help="ndformer: exact efficient attention patterns for N-D data.",
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode=None,
    )
    console = Console(highlight=False)

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
        from .viz import parse_shape, pattern_view, plot_pattern

        try:
            view = pattern_view(spec, parse_shape(shape), query=query, head=head, heads=heads)
        except ValueError as err:
            _fail(console, str(err))
        console.print(view.summary())
        picture = view.text()
        if picture is not None:
            console.print(picture)
        if out is not None:
            fig = plot_pattern(view)
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=120, bbox_inches="tight")
            console.print(f"wrote {out}")

    @app.command("patterns")
    def list_patterns_command() -> None:
        """List pattern names usable in spec strings, with their arguments."""
        from .patterns.spec import list_patterns, signature

        for name in list_patterns():
            console.print(signature(name))

    return app


def main() -> None:
    """Entry point of the ``ndformer`` console script."""
    if typer is None:
        sys.exit("ndformer's command line needs its extra: pip install 'ndformer[all]'")
    build_app()()


if __name__ == "__main__":
    main()
