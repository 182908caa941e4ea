"""The package's layers import one way only: layout -> patterns -> kernels -> attend ->
layers -> models -> data and plots -> train -> bench -> arena -> cli. A module may import
from its own layer and the layers below it, never from a layer above (and no module
imports the package root). Files stay under 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "ndformer"

#: Layer of every top-level module or subpackage, lowest first.
LAYERS: list[set[str]] = [
    {
        "_checks",
        "_cache",
        "_compile",
        "errors",
        "_io",
        "_index",
        "_version",
        "curves",
        "tokens",
        "reduce",
        "point_batch",
        "points_data",
    },  # fmt: skip  foundation: no ndformer imports but these
    {"layout"},
    {"patterns"},
    {"kernels"},
    {"attend", "backends", "choice"},
    {"layers", "position", "point_tokens", "nn"},
    {"models"},
    {"tasks", "viz"},
    {"train"},
    {"bench"},
    {"arena"},
    {"cli", "cli_train", "cli_arena", "cli_examples", "cli_errors", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def top_level(path: Path) -> str:
    """``kernels`` for src/ndformer/kernels/native.py, ``layers`` for layers.py."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_top_levels(path: Path, package_root: Path = PACKAGE) -> set[str]:
    """Top-level ndformer modules that ``path`` imports (relative or absolute);
    ``"<root>"`` for a name taken from the package root itself."""
    relative = path.relative_to(package_root.parent).with_suffix("").parts
    package = relative[:-1]  # the package a relative import starts from
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module.split(".") if node.module else []
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            target = [*base, *module]
            if target[:1] != ["ndformer"]:
                continue
            if len(target) > 1:
                found.add(target[1])
            else:  # from ndformer import x: x is a module of the package or a root name
                found |= {a.name if a.name in RANK else "<root>" for a in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "ndformer":
                    found.add(parts[1] if len(parts) > 1 else "<root>")
    return found


def test_every_module_has_a_layer():
    missing = {top_level(p) for p in modules() if top_level(p) != "__init__"} - set(RANK)
    assert not missing, f"add these modules to LAYERS: {sorted(missing)}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downward_only(path):
    own = top_level(path)
    if own == "__init__":  # the package root re-exports the public API
        return
    for name in imported_top_levels(path):
        assert name != "<root>", f"{path.name} imports the package root"
        assert RANK[name] <= RANK[own], (
            f"{path.relative_to(PACKAGE)} (layer {RANK[own]}: {own}) imports {name}"
            f" (layer {RANK[name]}), which is above it"
        )


def test_the_checker_sees_upward_and_root_imports(tmp_path):
    # a patterns module importing kernels, or the root's __version__, is caught
    copy = tmp_path / "ndformer" / "patterns" / "base.py"
    copy.parent.mkdir(parents=True)
    copy.write_text("from ..kernels.geometry import TileGeometry\nfrom .. import __version__\n")
    assert imported_top_levels(copy, tmp_path / "ndformer") == {"kernels", "<root>"}
    assert RANK["kernels"] > RANK["patterns"]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_stay_under_400_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"{path.relative_to(PACKAGE)} has {lines} lines: split it"
