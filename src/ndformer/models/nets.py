"""The model classes: plain (``vit``) and hierarchical (``hvit``, ``conv``) N-D networks."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import Block
from ..layout import Grid
from ..reduce import evit_fuse, start_source, tome_merge, unmerge
from ..tokens import PatchEmbed
from .config import ModelConfig, PatternSpec
from .parts import ConvBlock, Head, PatchMerging, upsample_nearest


def _cycled(spec: PatternSpec, count: int) -> list[str]:
    specs = [spec] if isinstance(spec, str) else list(spec)
    return [specs[i % len(specs)] for i in range(count)]


class NdModel(nn.Module):
    """Shared interface (timm-like) of every ndformer model.

    ``forward(x [B, in_chans, *spatial])`` returns logits [B, num_classes] for
    classification or [B, num_classes, *spatial] for segmentation. ``forward_features``
    gives the tokens [B, *grid, num_features] the head reads; ``forward_head`` maps
    them to logits; ``reset_classifier`` replaces the last layer.
    """

    config: ModelConfig
    num_features: int

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.ndim, self.in_chans, self.num_classes = (
            config.ndim,
            config.in_chans,
            config.num_classes,
        )

    def _make_head(self) -> None:
        c = self.config
        self.head = Head(self.num_features, c.num_classes, c.head, c.patch_tuple)

    def check_input(self, x: torch.Tensor, name: str = "input") -> None:
        """Raise ``ValueError`` if ``x`` is not [B, in_chans, *spatial] with ``ndim`` axes."""
        if x.dim() != self.ndim + 2 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)} but the model expects [B, in_chans="
                f"{self.in_chans}, {self.ndim} spatial axes]"
                f" ({self.config.name or self.config.arch}, ndim={self.ndim})"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, size: tuple[int, ...] | None = None):
        """Logits from ``forward_features``; ``size`` crops dense outputs to the input size."""
        return self.head(features, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_head(self.forward_features(x), tuple(x.shape[2:]))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: features only)."""
        self.config.num_classes = self.num_classes = num_classes
        self._make_head()


class VisionTransformer(NdModel):
    """Plain pre-norm transformer over N-D patch tokens with N-D RoPE (Volume-Transformer style).

    ``config.pattern`` is cycled over the blocks, e.g. ``["window(8)", "window(8,
    shift=4)"]`` alternates Swin-style.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c = config
        self.patch_embed = PatchEmbed(c.in_chans, c.dim, c.patch, c.ndim)
        rates = torch.linspace(0, c.drop_path, c.depth).tolist()
        self.blocks = nn.Sequential(
            *[
                Block(c.dim, c.heads, p, c.mlp_ratio, rate, rope=c.rope, ndim=c.ndim)
                for p, rate in zip(_cycled(c.pattern, c.depth), rates, strict=True)
            ]
        )
        self.norm = nn.LayerNorm(c.dim)
        self.num_features = c.dim
        self._make_head()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.reduces_tokens:
            return self.norm(self._reduced_blocks(x))
        return self.norm(self.blocks(x))

    @property
    def reduces_tokens(self) -> bool:
        return bool(self.config.token_merging) or self.config.keep_rate < 1.0

    def removed_after(self, index: int, tokens: int) -> int:
        """How many of ``tokens`` the reduction after block ``index`` removes: ToMe's r after
        every block (at most half), EViT's fusion after 1/4, 1/2 and 3/4 of the blocks."""
        c = self.config
        if c.token_merging:
            return min(c.token_merging, tokens // 2)
        depth = len(self.blocks)
        if c.keep_rate < 1.0 and index in {depth * i // 4 - 1 for i in (1, 2, 3)} - {-1}:
            keep = math.ceil(c.keep_rate * tokens)
            return tokens - keep - 1 if keep + 1 < tokens else 0
        return 0

    def token_counts(self, tokens: int) -> list[int]:
        """The number of tokens each block attends among, from ``tokens`` patch tokens."""
        counts = []
        for index in range(len(self.blocks)):
            counts.append(tokens)
            tokens -= self.removed_after(index, tokens)
        return counts

    def _reduced_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks with token reduction (ToMe merging or EViT fusion) between them.
        Positions reduce as size-weighted means for RoPE, attention is proportional;
        ``unmerge`` gives every grid position its token's features back at the end."""
        batch, grid, dim = x.shape[0], x.shape[1:-1], x.shape[-1]
        tokens = x.reshape(batch, -1, dim)
        positions = Grid(tuple(grid)).coords_on(x.device).to(x.dtype).expand(batch, -1, -1)
        sizes = torch.ones(tokens.shape[:2], dtype=x.dtype, device=x.device)
        source = start_source(tokens)
        for index, block in enumerate(self.blocks):
            removed = self.removed_after(index, tokens.shape[1])
            fuse = bool(removed) and not self.config.token_merging
            out, keys, received = block.attn.forward_merged(
                block.norm1(tokens), positions, sizes, received=fuse
            )
            tokens = tokens + block.drop_path(out)
            tokens = tokens + block.drop_path(block.mlp(block.norm2(tokens)))
            if not removed:
                continue
            both = torch.cat((tokens, positions), dim=-1)
            if fuse:
                keep = tokens.shape[1] - removed - 1
                reduced = evit_fuse(both, sizes, source, received, keep)
            else:
                reduced = tome_merge(both, sizes, source, removed, metric=keys)
            tokens, positions = reduced.tokens.split((dim, positions.shape[-1]), dim=-1)
            sizes, source = reduced.sizes, reduced.source
        return unmerge(tokens, source).reshape(x.shape)


class HierarchicalNet(NdModel):
    """Stages of blocks with N-D patch merging (every axis halved) between them.

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
                self.merges.append(PatchMerging(dims[s - 1], dim, c.ndim))
            if c.arch == "conv":
                blocks = [
                    ConvBlock(dim, c.kernel, c.ndim, c.mlp_ratio, next(rates)) for _ in range(depth)
                ]
            else:
                stage_spec = c.stage_patterns[s] if c.stage_patterns else c.pattern
                blocks = [
                    Block(dim, heads, p, c.mlp_ratio, next(rates), rope=c.rope, ndim=c.ndim)
                    for p in _cycled(stage_spec, depth)
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
        fused = None
        for s, (out, norm, lateral) in enumerate(
            zip(outputs, self.norms, self.lateral, strict=True)
        ):
            level = upsample_nearest(lateral(norm(out)), 2**s, grid)
            fused = level if fused is None else fused + level
        return fused
