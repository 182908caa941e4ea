"""Exporting a trained grid model for deployment: ``torch.export`` programs (``.pt2``, with
ndformer's kernels as custom operators) and ONNX files (standard operators only).

- ``pt2``: ``torch.export.export(model, strict=True)``; the program calls the native and
  block-sparse custom ops, so loading it needs ``import ndformer`` first (which registers
  them): ``ep = torch.export.load(path); ep.module()(x)``.
- ``onnx``: traced inside ``choice.portable()``, where attention takes only standard
  operators (masked patterns as dense SDPA under a constant N x N mask), then converted by
  PyTorch's exporter (``torch.onnx.export``, which needs ``onnx`` and ``onnxscript``) and,
  when ``onnxruntime`` is installed, run once and compared with PyTorch.

Point models take a ``PointBatch`` whose voxelization and serialization are data-dependent
(sorting, unique): they are not exportable as one graph, and are refused with that reason.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from ..choice import portable
from ..errors import DataError, UsageError
from ..models import NdModel

FORMATS = ("pt2", "onnx")
POINT_ARCHS = ("volt", "voxconv")


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _check(model: NdModel, example: torch.Tensor, fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if model.config.arch in POINT_ARCHS:
        raise UsageError(
            f"{model.config.name or model.config.arch} is a point model: its voxelization and"
            " serialization are data-dependent (sorting, unique) and export as no single graph;"
            " export grid models (vit, hvit, conv)"
        )
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


def _onnx_outputs(path: Path, example: torch.Tensor) -> torch.Tensor | None:
    if _missing("onnxruntime"):
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example.detach().cpu().numpy()}
    return torch.from_numpy(session.run(None, feed)[0])


def export_model(
    model: NdModel, example: torch.Tensor, fmt: str, out: str | Path
) -> dict[str, Any]:
    """Write ``model`` (eval mode, on CPU) traced on ``example`` [B, in_chans, *spatial] to
    ``out`` as ``fmt`` (``"pt2"`` or ``"onnx"``), atomically.

    Returns what was checked: ``{"format", "path", "bytes", "custom_ops", "max_abs_error"}``
    where ``max_abs_error`` compares the written file's outputs on ``example`` (reloaded
    program, or onnxruntime; None without onnxruntime) with the eager model's.
    """
    out = Path(out)
    _check(model, example, fmt)
    model = model.eval().cpu()
    example = example.detach().cpu()
    with torch.no_grad():
        expected = model(example)
        if fmt == "pt2":
            program = torch.export.export(model, (example,), strict=True)
            _replace(lambda tmp: torch.export.save(program, tmp), out)
            got = torch.export.load(out).module()(example)
        else:
            with portable():
                program = torch.export.export(model, (example,), strict=True)
            onnx = torch.onnx.export(program, (example,), dynamo=True, external_data=False)
            _replace(lambda tmp: onnx.save(str(tmp)), out)
            got = _onnx_outputs(out, example)
    ops = sorted({str(n.target) for n in program.graph.nodes if "ndformer" in str(n.target)})
    if got is not None and got.shape != expected.shape:
        raise DataError(f"{out}: the exported model gives {tuple(got.shape)}, the model"
                        f" {tuple(expected.shape)}")  # fmt: skip
    error = None if got is None else (got - expected).abs().max().item()
    return {"format": fmt, "path": str(out), "bytes": out.stat().st_size, "custom_ops": ops,
            "max_abs_error": error}  # fmt: skip
