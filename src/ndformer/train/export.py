"""Exporting a trained grid model for deployment: ``torch.export`` programs (``.pt2``, with
ndformer's kernels as custom operators) and ONNX files (standard operators only).

- ``pt2``: ``torch.export.export(model, strict=True)``; the program calls the native and
  block-sparse custom ops, so loading it needs ``import ndformer`` first (which registers
  them): ``ep = torch.export.load(path); ep.module()(x)``.
- ``onnx``: traced inside ``choice.portable()``, where attention takes only standard
  operators (masked patterns as dense SDPA under a constant N x N mask), then converted by
  PyTorch's exporter (``torch.onnx.export``, which needs ``onnx`` and ``onnxscript``) and,
  when ``onnxruntime`` is installed, run once and compared with PyTorch.

Point models (``volt-*``) take a ``PointBatch`` whose voxelization and grouping are
data-dependent (unique, sorting): their program is the network after those steps
(``export_points``): it takes ``point_inputs(model, batch)``, with dynamic numbers of points
and tokens, and is traced inside ``portable()`` in both formats.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from ..choice import portable
from ..errors import DataError, UsageError
from ..models import NdModel
from ..models.config import POINT_ARCHS
from .export_points import PointProgram, dynamic_shapes, not_exportable, point_inputs

FORMATS = ("pt2", "onnx")


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _check(model: NdModel, example: torch.Tensor, fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if model.config.arch in POINT_ARCHS and (reason := not_exportable(model)) is not None:
        raise UsageError(reason)
    model.check_input(example, "the example input")
    if fmt == "onnx" and (missing := _missing("onnx", "onnxscript")):
        raise UsageError(
            f"--format onnx needs {' and '.join(missing)}: pip install 'ndformer[export]'"
        )


def _replace(write, out: Path) -> None:
    """``write(tmp)`` then move it over ``out``: a crash never leaves half a file there."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        write(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _onnx_outputs(path: Path, args: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    if _missing("onnxruntime"):
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = {name: a.detach().cpu().numpy() for name, a in zip(names, args, strict=True)}
    return torch.from_numpy(session.run(None, feed)[0])


def export_model(model: NdModel, example, fmt: str, out: str | Path) -> dict[str, Any]:
    """Write ``model`` (eval mode, on CPU) traced on ``example`` to ``out`` as ``fmt``
    (``"pt2"`` or ``"onnx"``), atomically.

    ``example``: [B, in_chans, *spatial] for grid models (the program takes that shape);
    a ``PointBatch`` for point models (the program takes ``point_inputs(model, batch)``
    of any number of points). Returns what was checked: ``{"format", "path", "bytes",
    "custom_ops", "max_abs_error", "inputs"}`` where ``max_abs_error`` compares the written
    file's outputs on ``example`` (reloaded program, or onnxruntime; None without
    onnxruntime) with the eager model's, and ``inputs`` are the program's input shapes.
    """
    out = Path(out)
    _check(model, example, fmt)
    model = model.eval().cpu()
    points = model.config.arch in POINT_ARCHS
    if points:
        module: torch.nn.Module = PointProgram(model)
        args, dynamic = point_inputs(model, example), dynamic_shapes()
    else:
        module, args, dynamic = model, (example.detach().cpu(),), None
    tracing = portable if points or fmt == "onnx" else contextlib.nullcontext
    with torch.no_grad():
        expected = model(example) if points else model(*args)
        with tracing():
            program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=True)
        if fmt == "pt2":
            _replace(lambda tmp: torch.export.save(program, tmp), out)
            got = torch.export.load(out).module()(*args)
        else:
            onnx = torch.onnx.export(program, args, dynamo=True, external_data=False)
            _replace(lambda tmp: onnx.save(str(tmp)), out)
            got = _onnx_outputs(out, args)
    ops = sorted({str(n.target) for n in program.graph.nodes if "ndformer" in str(n.target)})
    if got is not None and got.shape != expected.shape:
        raise DataError(f"{out}: the exported model gives {tuple(got.shape)}, the model"
                        f" {tuple(expected.shape)}")  # fmt: skip
    error = None if got is None else (got - expected).abs().max().item()
    return {"format": fmt, "path": str(out), "bytes": out.stat().st_size, "custom_ops": ops,
            "max_abs_error": error, "inputs": [tuple(a.shape) for a in args]}  # fmt: skip
