"""Point-cloud segmentation models: ``volt`` (Volume-Transformer style) and ``voxconv``.

Both map a ``PointBatch`` (xyz [N, ndim] in metres, features [N, in_chans], a scene
index per point) to per-point logits [N, num_classes]. Both see the same inputs per
point: its features and its coordinates relative to its scene (x, y centred on the
scene's mean, z above the scene's lowest point, in units of 2 m), so heights are
known and horizontal position is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import Block
from ..layout import Points
from ..point_batch import PointBatch
from ..point_tokens import PointTokenizer
from .base import NdModel, cycled, register_arch
from .config import ModelConfig, check_int, register_config, register_model
from .hierarchical import HierarchicalConfig, HierarchicalNet
from .voxel_tokens import VoxelTokenizer, VoxelUpsample, default_upsample_dim

#: ``VoltConfig.tokenizer``: how points become tokens and tokens per-point features.
VOLT_TOKENIZERS = ("pointnet", "linear")


@register_config("volt")
@dataclass
class VoltConfig(ModelConfig):
    """``volt``: int ``depth`` and ``heads``; one ``patch`` size for every axis, of voxels
    of ``voxel_size`` metres; ``head`` must be ``segmentation`` (per-point logits).

    ``tokenizer``: ``pointnet`` (``PointTokenizer``: a max over a per-point MLP; per point
    its token's feature + an offset embedding + a skip) or ``linear`` (Volt's own:
    ``VoxelTokenizer``, a linear layer over the patch's mean voxel features, and
    ``VoxelUpsample``, one transposed convolution to ``upsample_dim`` channels per voxel,
    None: ``dim // 3`` as Volt-S / Volt-B; the head then reads ``upsample_dim`` features).
    """

    voxel_size: float = 0.1
    tokenizer: str = "pointnet"
    upsample_dim: int | None = None
    #: LayerNorm of every head's queries and keys before RoPE (Volt).
    qk_norm: bool = False
    #: RoPE's base and its rotation pairs per axis (None: even; Volt-S: 100, (12, 12, 8)).
    rope_base: float = 10000.0
    rope_split: tuple[int, ...] | None = None
    #: A second head, trained on a teacher's argmax labels (Volt's distillation).
    distill_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._flat()
        self._segments_points()
        if isinstance(self.patch, tuple) and len(set(self.patch)) > 1:
            raise ValueError(f"volt takes one patch size for every axis, got {self.patch}")
        if self.tokenizer not in VOLT_TOKENIZERS:
            raise ValueError(
                f"tokenizer must be one of {', '.join(VOLT_TOKENIZERS)}, got {self.tokenizer!r}"
            )
        if self.upsample_dim is not None:
            check_int("upsample_dim", self.upsample_dim, minimum=1)
            if self.tokenizer != "linear":
                raise ValueError(
                    f"upsample_dim={self.upsample_dim} sets the width of the linear tokenizer's"
                    " transposed convolution: give tokenizer='linear' or upsample_dim=None"
                )
        if self.rope_split is not None:
            split = self.rope_split = tuple(self.rope_split)
            if len(split) != self.ndim:
                raise ValueError(
                    f"rope_split {split} has {len(split)} axes and the model {self.ndim}: give"
                    " one pair count per axis, or rope_split=None (even)"
                )
            head_dim = self.dim // self.heads
            if 2 * sum(split) > head_dim:
                raise ValueError(
                    f"rope_split {split} rotates {2 * sum(split)} channels, more than the head"
                    f" dim {self.dim} / {self.heads} = {head_dim}; give rope_split=None (even)"
                )


@register_config("voxconv")
@dataclass
class VoxconvConfig(ModelConfig):
    """``voxconv``: a ``conv`` network (stages of ``depth``, odd ``kernel``) over voxels of
    ``voxel_size`` metres; ``head`` must be ``segmentation``."""

    voxel_size: float = 0.1
    kernel: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        self._staged()
        self._segments_points()
        check_int("kernel", self.kernel, minimum=1)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel}")


#: Metres per unit of the coordinate features.
COORD_SCALE = 2.0
#: The most voxels (over a batch) ``voxconv`` builds a dense grid of.
MAX_VOXELS = 2**24


def scene_inputs(points: PointBatch) -> torch.Tensor:
    """Per-point inputs [N, ndim + C]: coordinates relative to the scene (horizontal axes
    centred on the scene mean, the last axis above the scene minimum) / 2 m, then features."""
    xyz, batch = points.xyz, points.batch
    scenes, ndim = points.num_scenes, xyz.shape[1]
    index = batch[:, None].expand(-1, ndim)
    count = torch.bincount(batch, minlength=scenes).clamp_min(1).to(xyz.dtype)[:, None]
    mean = xyz.new_zeros(scenes, ndim).index_add_(0, batch, xyz) / count
    low = xyz.new_full((scenes, ndim), float("inf")).scatter_reduce(0, index, xyz, "amin")
    centre = torch.cat((mean[:, :-1], low[:, -1:]), dim=1)
    return torch.cat(((xyz - centre[batch]) / COORD_SCALE, points.features.to(xyz.dtype)), dim=1)


class PointModel(NdModel):
    """Shared checks and head of the point models: ``forward(PointBatch) -> [N, classes]``."""

    def check_input(self, x, name: str = "input") -> None:  # type: ignore[override]
        if not isinstance(x, PointBatch):
            raise ValueError(
                f"{self.config.name or self.config.arch} segments point clouds: {name} must be a"
                f" PointBatch (xyz, features, batch), got {type(x).__name__}"
            )
        n = len(x)
        if x.xyz.shape != (n, self.ndim) or x.features.shape != (n, self.in_chans):
            raise ValueError(
                f"{name}: xyz {tuple(x.xyz.shape)} and features {tuple(x.features.shape)} must"
                f" be [N, ndim={self.ndim}] and [N, in_chans={self.in_chans}]"
            )
        if n == 0:
            raise ValueError(f"{name} has no points")

    def _make_head(self) -> None:
        c = self.config

        def head() -> nn.Module:
            if c.num_classes <= 0:
                return nn.Identity()
            return nn.Sequential(
                nn.LayerNorm(self.num_features), nn.Linear(self.num_features, c.num_classes)
            )

        self.head = head()
        if getattr(c, "distill_head", False):  # trained on a teacher's labels, not used to predict
            self.distill_head = head()

    def forward_head(self, features: torch.Tensor, size=None) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: PointBatch) -> torch.Tensor:  # type: ignore[override]
        self.check_input(x)
        return self.forward_head(self.forward_features(x))


@register_arch("volt")
class VoltNet(PointModel):
    """Volume-Transformer-style segmentation: a tokenizer (one token per occupied patch of
    ``patch`` voxels of ``voxel_size``) -> transformer blocks with 3-D RoPE on the token
    coordinates and ``pattern`` (a spec or a list cycled over the blocks, on the tokens'
    ``Points`` layout, never across scenes) -> per-point features -> the head.

    ``tokenizer="pointnet"``: ``PointTokenizer``; per point its token's feature + an
    embedding of its offset in the patch + its own point embedding ([N, dim]).
    ``tokenizer="linear"`` (Volt's): ``VoxelTokenizer`` over the voxels' mean inputs and
    occupancy; ``VoxelUpsample``'s transposed convolution, read at each point's voxel
    ([N, upsample_dim]). The head is LayerNorm + Linear in both."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c = config
        linear = c.tokenizer == "linear"
        if linear:
            self.tokenizer = VoxelTokenizer(
                c.voxel_size, c.patch_tuple[0], c.in_chans + c.ndim, c.dim, c.ndim
            )
        else:
            self.tokenizer = PointTokenizer(
                c.voxel_size, c.patch_tuple[0], c.in_chans + c.ndim, c.dim, c.ndim,
                hidden=c.dim // 2,
            )  # fmt: skip
        rates = torch.linspace(0, c.drop_path, c.depth).tolist()
        options = dict(rope=c.rope, ndim=c.ndim, qk_norm=c.qk_norm, rope_base=c.rope_base,
                       rope_split=c.rope_split)  # fmt: skip
        self.blocks = nn.ModuleList(
            Block(c.dim, c.heads, p, c.mlp_ratio, rate, **options)
            for p, rate in zip(cycled(c.pattern, c.depth), rates, strict=True)
        )
        self.norm = nn.LayerNorm(c.dim)
        if linear:
            width = c.upsample_dim or default_upsample_dim(c.dim)
            self.upsample = VoxelUpsample(c.dim, width, c.patch_tuple[0], c.ndim)
            self.num_features = width
        else:
            self.skip = nn.Linear(self.tokenizer.hidden, c.dim)
            self.num_features = c.dim
        self._make_head()

    def forward_features(self, x: PointBatch) -> torch.Tensor:  # type: ignore[override]
        """Per-point features [N, num_features]."""
        return self.forward_tokens(*self.tokenizer.assign(x.xyz, scene_inputs(x), x.batch))

    def forward_tokens(
        self, inputs: torch.Tensor, point_token: torch.Tensor, layout: Points
    ) -> torch.Tensor:
        """Per-point features [N, num_features] from ``tokenizer.assign``'s (inputs,
        point_token, layout): the part of the model with weights, and without
        data-dependent shapes (what an exported point model runs). With the linear
        tokenizer ``point_token`` is each point's voxel, ``token * patch^ndim + cell``."""
        if self.config.tokenizer == "linear":
            h = self.tokenizer.embed(inputs, point_token, layout.num_tokens)
        else:
            h, per_point = self.tokenizer.embed(inputs, point_token, layout.num_tokens)
        for block in self.blocks:
            h = block(h, points=layout)
        if self.config.tokenizer == "linear":
            return self.upsample(self.norm(h), point_token)
        offsets = inputs[:, : self.ndim]
        return self.tokenizer.spread(self.norm(h), point_token, offsets) + self.skip(per_point)

    def token_layout(self, x: PointBatch):
        """The ``Points`` layout of the tokens the blocks attend among."""
        return self.tokenizer.assign(x.xyz, scene_inputs(x), x.batch)[2]


@register_arch("voxconv")
class VoxelConvNet(PointModel):
    """A dense N-D CNN over voxels (the distillation teacher for point models).

    Points are averaged into voxels of ``voxel_size`` (per-voxel mean of the inputs plus
    an occupancy channel) on one grid per scene, padded to the batch's largest; the
    ``conv`` network (depthwise-conv stages, ``patch``, ``depth``, ``dim``) predicts
    per-voxel logits and every point reads those of its voxel.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c = config
        inner = HierarchicalConfig(
            arch="conv", ndim=c.ndim, in_chans=c.in_chans + c.ndim + 1,
            num_classes=c.num_classes, head=c.head, patch=c.patch, dim=c.dim, depth=c.depth,
            heads=c.heads, mlp_ratio=c.mlp_ratio, drop_path=c.drop_path, kernel=c.kernel,
        )  # fmt: skip
        self.net = HierarchicalNet(inner)
        self.num_features = self.net.num_features

    def reset_classifier(self, num_classes: int) -> None:
        self.config.num_classes = self.num_classes = num_classes
        self.net.reset_classifier(num_classes)

    def forward_features(self, x: PointBatch) -> torch.Tensor:  # type: ignore[override]
        raise NotImplementedError("voxconv maps points to logits directly; call the model")

    def forward(self, x: PointBatch) -> torch.Tensor:  # type: ignore[override]
        self.check_input(x)
        inputs = scene_inputs(x)
        scenes, ndim = x.num_scenes, self.ndim
        index = x.batch[:, None].expand(-1, ndim)
        low = x.xyz.new_full((scenes, ndim), float("inf")).scatter_reduce(0, index, x.xyz, "amin")
        voxel = torch.floor((x.xyz - low[x.batch]).detach() / self.config.voxel_size).long()
        dims = (voxel.amax(0) + 1).tolist()
        flat = x.batch.clone()
        for axis, size in enumerate(dims):
            flat = flat * size + voxel[:, axis]
        cells = scenes * math.prod(dims)
        if cells > MAX_VOXELS:
            raise ValueError(
                f"voxconv: {scenes} scene(s) of {'x'.join(map(str, dims))} voxels of"
                f" {self.config.voxel_size} m exceed {MAX_VOXELS} voxels; raise voxel_size"
                " or batch fewer scenes"
            )
        sums = inputs.new_zeros(cells, inputs.shape[1]).index_add_(0, flat, inputs)
        count = torch.bincount(flat, minlength=cells).to(inputs.dtype)[:, None]
        grid = torch.cat((sums / count.clamp_min(1), (count > 0).to(inputs.dtype)), dim=1)
        grid = grid.view(scenes, *dims, -1).movedim(-1, 1)  # [B, channels, *dims]
        logits = self.net(grid)  # [B, classes, *dims]
        return logits.movedim(1, -1).reshape(cells, -1)[flat]


VOLT_TINY_DIM = 128
register_model("volt-tiny", "volt", ndim=3, head="segmentation", dim=VOLT_TINY_DIM, depth=6,
               heads=4, patch=4)  # fmt: skip
#: Volt-S (the Volume Transformer, arXiv 2604.19609): width 384, 12 layers, 6 heads of 64
#: channels, qk-norm, 5^3-voxel patches, RoPE with base 100 over 12/12/8 pairs on x/y/z.
#: Volt's linear tokenizer and transposed-convolution upsampling (to ``upsample_dim`` =
#: 384 // 3 = 128 channels, Volt-S's ``up_mlp_dim``); ``tokenizer="pointnet"`` gives the
#: PointNet-style tokenizer of ``volt-tiny`` instead.
#: Stochastic depth rising linearly to 0.3 over the blocks, as Volt's configs.
_VOLT = dict(ndim=3, head="segmentation", depth=12, patch=5, qk_norm=True, rope_base=100.0,
             rope_split=(12, 12, 8), tokenizer="linear", drop_path=0.3)  # fmt: skip
register_model("volt-small", "volt", **_VOLT, dim=384, heads=6)
#: Volt-B (Volt's configs/*/semseg-volt-joint-base.py): width 768, 12 heads of 64 (the same
#: RoPE split), transposed convolution to 768 // 3 = 256 channels (its ``up_mlp_dim``).
register_model("volt-base", "volt", **_VOLT, dim=768, heads=12)
register_model("voxconv-tiny", "voxconv", ndim=3, head="segmentation", dim=32,
               depth=(2, 2, 2, 2), heads=1, patch=2)  # fmt: skip
