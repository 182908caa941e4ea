"""Plain transformers over N-D patch tokens (``vit``), with optional token reduction."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import Block, MergedTokens
from ..layout import Grid
from ..patterns import Full
from ..patterns import pattern as parse_pattern
from ..reduce import evit_fuse, start_source, tome_merge, unmerge
from ..tokens import PatchEmbed
from .base import NdModel, cycled, register_arch
from .config import ModelConfig, check_int, register_config, register_model


@register_config("vit")
@dataclass
class VitConfig(ModelConfig):
    """``vit``: int ``depth`` and ``heads``; token reduction between blocks:

    - ``token_merging``: ToMe's r, tokens merged after every block;
    - ``keep_rate``: EViT's keep rate (1.0 = off). After 1/4, 1/2 and 3/4 of the blocks,
      the ``ceil(keep_rate * n)`` most attended of the n tokens stay and the rest fuse
      into one token.

    Both need full attention (merged tokens no longer form a grid), not both at once.
    """

    token_merging: int = 0
    keep_rate: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._flat()
        check_int("token_merging", self.token_merging, minimum=0)
        if isinstance(self.keep_rate, bool) or not 0.0 < self.keep_rate <= 1.0:
            raise ValueError(f"keep_rate must be in (0, 1] (1 = off), got {self.keep_rate!r}")
        used = {"token_merging": self.token_merging} if self.token_merging else {}
        if self.keep_rate < 1.0:
            used["keep_rate"] = self.keep_rate
        if len(used) > 1:
            raise ValueError(
                f"token_merging={self.token_merging} and keep_rate={self.keep_rate} are two"
                " token reductions; choose one"
            )
        if used:
            ((option, value),) = used.items()
            specs = [self.pattern] if isinstance(self.pattern, str) else self.pattern
            grid_only = [s for s in specs if parse_pattern(s) != Full()]
            if grid_only:
                raise ValueError(
                    f"{option}={value} needs arch 'vit' with full attention: reduced tokens no"
                    f" longer form a grid, so grid patterns {grid_only} cannot follow a"
                    " reduction"
                )


@register_arch("vit")
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
                for p, rate in zip(cycled(c.pattern, c.depth), rates, strict=True)
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
            merged = MergedTokens(positions, sizes, want_received=fuse)
            tokens = block(tokens, merged=merged)
            if not removed:
                continue
            both = torch.cat((tokens, positions), dim=-1)
            if fuse:
                keep = tokens.shape[1] - removed - 1
                reduced = evit_fuse(both, sizes, source, merged.received, keep)
            else:
                reduced = tome_merge(both, sizes, source, removed, metric=merged.keys)
            tokens, positions = reduced.tokens.split((dim, positions.shape[-1]), dim=-1)
            sizes, source = reduced.sizes, reduced.source
        return unmerge(tokens, source).reshape(x.shape)


register_model("vit-tiny", "vit", dim=192, depth=12, heads=3)
register_model("vit-small", "vit", dim=384, depth=12, heads=6)
register_model("vit-base", "vit", dim=768, depth=12, heads=12)
