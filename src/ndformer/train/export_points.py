"""Exporting a point model (``volt-*``): the network as one graph, its layout as inputs.

A point model's first steps depend on the data: voxelizing the points, ``unique`` over
their patches (how many tokens there are) and sorting the tokens into each pattern's
groups. No traced graph can hold them, so an exported point model is split where the
weights begin:

- ``point_inputs(model, batch)`` (plain PyTorch, no weights, run before the program):
  ``(inputs [N, ndim + C], point_token [N], coords [T, ndim], scene [T], groups [P, T])``
  — every point's offset in its patch and its features, its token, the tokens' patch
  coordinates and scenes, and one row of group ids per distinct pattern of the blocks
  (in the order of ``PointProgram.patterns``); with ``tokenizer="linear"`` the inputs
  are the features [N, ndim + C] alone and point_token is each point's voxel,
  ``token * patch^ndim + cell`` (``VoxelTokenizer.assign``);
- ``PointProgram(model)``: those five tensors -> per-point logits [N, classes], with
  dynamic N and T; attention within each group runs as SDPA under the group mask.

``program(*point_inputs(model, batch))`` equals ``model(batch)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layout import FixedPoints
from ..models import NdModel
from ..point_batch import PointBatch

#: Architectures ``PointProgram`` exports (``voxconv`` builds a dense grid whose size
#: depends on the data: export its inner grid network instead).
EXPORTABLE = ("volt",)


def not_exportable(model: NdModel) -> str | None:
    """Why ``model`` (a point model) exports as no single graph, or None if it does."""
    if model.config.arch in EXPORTABLE:
        return None
    return (f"{model.config.name or model.config.arch} builds a dense voxel grid whose size"
            " depends on the points and exports as no single graph; point models that"
            f" export: {', '.join(EXPORTABLE)}")  # fmt: skip


def _patterns(model: NdModel) -> list:
    """The distinct attention patterns of the model's blocks, ordered by ``repr``."""
    unique = {repr(block.attn.pattern): block.attn.pattern for block in model.blocks}
    return [unique[name] for name in sorted(unique)]


class PointProgram(nn.Module):
    """``model``'s network from ``point_inputs``: forward(inputs, point_token, coords,
    scene, groups) -> logits [N, classes] (see the module docstring)."""

    def __init__(self, model: NdModel) -> None:
        super().__init__()
        if (reason := not_exportable(model)) is not None:
            raise ValueError(reason)
        self.model = model
        self.patterns = [repr(p) for p in _patterns(model)]

    def forward(
        self,
        inputs: torch.Tensor,
        point_token: torch.Tensor,
        coords: torch.Tensor,
        scene: torch.Tensor,
        groups: torch.Tensor,
    ) -> torch.Tensor:
        layout = FixedPoints(coords, scene, dict(zip(self.patterns, groups.unbind(0), strict=True)))
        return self.model.forward_head(self.model.forward_tokens(inputs, point_token, layout))


def point_inputs(model: NdModel, batch: PointBatch) -> tuple[torch.Tensor, ...]:
    """The data-dependent part of ``model`` on ``batch``: ``PointProgram``'s five inputs."""
    from ..models.points import scene_inputs

    model.check_input(batch, "the example input")
    inputs, point_token, points = model.tokenizer.assign(
        batch.xyz, scene_inputs(batch), batch.batch
    )
    fixed = FixedPoints.of(points, _patterns(model))
    groups = torch.stack([fixed.groups[name] for name in sorted(fixed.groups)])
    return inputs, point_token, points.coords, points.batch, groups


def dynamic_shapes() -> tuple[dict[int, object], ...]:
    """``torch.export`` dynamic dimensions of ``PointProgram``'s inputs: points N, tokens T."""
    points, tokens = torch.export.Dim("points", min=2), torch.export.Dim("tokens", min=2)
    return {0: points}, {0: points}, {0: tokens}, {0: tokens}, {1: tokens}
