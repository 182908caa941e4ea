"""Hierarchical N-D networks: stages with patch merging, of transformer blocks (``hvit``,
Swin-like) or depthwise-conv blocks (``conv``, the distillation teacher)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import Block
from ..tokens import PatchEmbed
from .base import NdModel, cycled, register_arch
from .config import ModelConfig, PatternSpec, _spec_list, check_int, register_config, register_model
from .parts import ConvBlock, PatchMerging, merge_axes, upsample_nearest


@register_config("hvit", "conv")
@dataclass
class HierarchicalConfig(ModelConfig):
    """``hvit`` / ``conv``: ``depth`` and ``heads`` per stage (channels double, the
    ``merge_axes`` halve from stage to stage: None = every axis; ``(0, 1, 2)`` of
    [x, y, z, t] keeps time, as SwiFT). ``pattern`` cycles over every stage's blocks;
    ``stage_patterns`` (``hvit``) sets one spec or list per stage; ``kernel`` is the
    depthwise convolution's size (``conv``, odd)."""

    stage_patterns: list[PatternSpec] | None = None
    kernel: int = 3
    merge_axes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._staged()
        if self.merge_axes is not None:
            self.merge_axes = merge_axes("merge_axes", self.merge_axes, self.ndim)
        check_int("kernel", self.kernel, minimum=1)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel}")
        if self.stage_patterns is not None:
            if self.arch != "hvit" or len(self.stage_patterns) != self.num_stages:
                raise ValueError(
                    f"stage_patterns needs arch 'hvit' and one entry per stage"
                    f" ({self.num_stages}), got {self.stage_patterns!r} for arch {self.arch!r}"
                )
            self.stage_patterns = [
                _spec_list(f"stage_patterns[{i}]", p) for i, p in enumerate(self.stage_patterns)
            ]


@register_arch("hvit", "conv")
class HierarchicalNet(NdModel):
    """Stages of blocks with N-D patch merging (``merge_axes`` halved) between them.

    ``arch='hvit'``: transformer blocks (Swin / SegFormer3D-like); ``arch='conv'``:
    depthwise-conv blocks (the N-D CNN used as a distillation teacher). Channels
    double at every stage. For segmentation the stages are projected to the first
    stage's width, upsampled to its grid and summed before the dense head.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c = config
        dims = [c.dim * 2**s for s in range(c.num_stages)]
        self.patch_embed = PatchEmbed(c.in_chans, c.dim, c.patch, c.ndim)
        rates = iter(torch.linspace(0, c.drop_path, sum(c.depth)).tolist())
        self.stages, self.merges = nn.ModuleList(), nn.ModuleList()
        for s, (dim, depth, heads) in enumerate(zip(dims, c.depth, c.heads, strict=True)):
            if s:
                self.merges.append(PatchMerging(dims[s - 1], dim, c.ndim, c.merge_axes))
            if c.arch == "conv":
                blocks = [
                    ConvBlock(dim, c.kernel, c.ndim, c.mlp_ratio, next(rates)) for _ in range(depth)
                ]
            else:
                stage_spec = c.stage_patterns[s] if c.stage_patterns else c.pattern
                blocks = [
                    Block(dim, heads, p, c.mlp_ratio, next(rates), rope=c.rope, ndim=c.ndim)
                    for p in cycled(stage_spec, depth)
                ]
            self.stages.append(nn.Sequential(*blocks))
        self.dense = c.head == "segmentation"
        if self.dense:
            self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
            self.lateral = nn.ModuleList(nn.Linear(d, c.dim) for d in dims)
            self.num_features = c.dim
        else:
            self.norm = nn.LayerNorm(dims[-1])
            self.num_features = dims[-1]
        self._make_head()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        outputs = []
        for s, stage in enumerate(self.stages):
            if s:
                x = self.merges[s - 1](x)
            x = stage(x)
            outputs.append(x)
        if not self.dense:
            return self.norm(x)
        grid = tuple(outputs[0].shape[1:-1])
        merged = merge_axes("merge_axes", self.config.merge_axes, self.ndim)
        fused = None
        for s, (out, norm, lateral) in enumerate(
            zip(outputs, self.norms, self.lateral, strict=True)
        ):
            factor = tuple(2**s if a in merged else 1 for a in range(self.ndim))
            level = upsample_nearest(lateral(norm(out)), factor, grid)
            fused = level if fused is None else fused + level
        return fused


_HVIT_TINY = dict(dim=96, depth=(2, 2, 6, 2), heads=(3, 6, 12, 24),
                  pattern=["window(7)", "window(7, shift=3)"])  # fmt: skip
register_model("hvit-tiny", "hvit", **_HVIT_TINY)
register_model("hvit-small", "hvit", **{**_HVIT_TINY, "depth": (2, 2, 18, 2)})
register_model("conv-tiny", "conv", dim=32, depth=(2, 2, 2, 2), heads=1, patch=2)

# SwiFT (Kim et al., NeurIPS 2023), checked against Transconnectome/SwiFT (swin4d_ver7 and
# sample_scripts/sample_script.sh): C=36, depths (2, 2, 6, 2), heads (3, 6, 12, 24),
# patch 6x6x6x1 on 96^3 x 20 frames, 4x4x4x4 windows in every stage (the script's; the
# parser's default first-stage window is 2^4), plain and shifted (by 2) alternating,
# merging of x, y, z only (8 tokens -> LN -> Linear(8C, 2C, no bias)), qkv bias, MLP
# ratio 4, no relative position bias, no dropout. Its windows clamp to the grid (no
# shift on an axis no longer than the window) and the sample script sets
# last_layer_full_MSA, so at 96^3 x 20 stage 3 (4^3 x 20 tokens) shifts in time only and
# stage 4 (2^3 x 20) attends over all of space x 4 frames unshifted: the stage_patterns
# below give exactly these windows at that size. Differs: RoPE in every attention instead
# of SwiFT's learned absolute embeddings (space [C, X, Y, Z] + time [C, T], added before
# every stage); a final LayerNorm (SwiFT defines one but skips it) and a linear head over
# the mean token (SwiFT's "v1" head, 1 logit for 2 classes); ndformer's windows do not
# clamp, so at other sizes the listed shifts stay.
_SWIFT_WINDOWS = ["window(4)", "window(4, shift=2)"]
_SWIFT_STAGES = [_SWIFT_WINDOWS, _SWIFT_WINDOWS, ["window(4)", "window(4, shift=(0, 0, 0, 2))"],
                 "window(4)"]  # fmt: skip
register_model("swift-tiny", "hvit", ndim=4, in_chans=1, num_classes=2, patch=(6, 6, 6, 1),
               dim=36, depth=(2, 2, 6, 2), heads=(3, 6, 12, 24), merge_axes=(0, 1, 2),
               pattern=_SWIFT_WINDOWS, stage_patterns=_SWIFT_STAGES)  # fmt: skip
