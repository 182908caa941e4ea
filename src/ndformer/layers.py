"""Transformer layers over channels-last N-D tokens [B, *grid, dim]."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_int
from .attend import BackendName, attend, expand_kv
from .layout import Grid, Points
from .patterns import Full, Pattern
from .patterns import pattern as parse_pattern
from .position import RoPE, rope_tables


class Attention(nn.Module):
    """Multi-head self-attention restricted to ``pattern``, with N-D RoPE.

    Input and output: [B, *grid, dim] (channels last, any number of grid axes).
    The grid is the token layout: queries and keys are rotated by their grid
    coordinates (``rope=True``) and attend through ``ndformer.attend``.
    ``pattern`` takes a ``Pattern`` or a spec string. ``ndim`` is optional; given,
    the RoPE split of ``head_dim`` is validated at construction instead of at the
    first call. ``qk_dim`` (default ``dim``) sets the query/key channels over all
    heads independently of the value channels: smaller ``qk_dim`` compresses the
    score computation (S2AFormer-style channel compression). ``kv_heads`` (default
    ``heads``, a divisor of it) gives keys and values fewer heads than queries
    (grouped-query attention: consecutive query heads share one key/value head).
    ``qk_norm=True`` normalizes every head's queries and keys with a LayerNorm over its
    channels (one per q and k, shared by the heads) before RoPE, as ViT-22B and the Volume
    Transformer do to keep the logits bounded. ``scale`` sets the logit scale (default
    ``1 / sqrt(qk_head_dim)``). ``rope_base`` and ``rope_split`` (rotation pairs per axis)
    configure RoPE (see ``RoPE``).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        pattern: Pattern | str = "full",
        rope: bool = True,
        qkv_bias: bool = True,
        *,
        ndim: int | None = None,
        rope_base: float = 10000.0,
        backend: BackendName = "auto",
        qk_dim: int | None = None,
        kv_heads: int | None = None,
        qk_norm: bool = False,
        scale: float | None = None,
        rope_split: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        check_int("Attention dim", dim, minimum=1)
        if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"Attention scale must be a positive number or None; got {scale!r}")
        self.scale = None if scale is None else float(scale)
        check_int("Attention heads", heads, minimum=1)
        if kv_heads is None:
            kv_heads = heads
        check_int("Attention kv_heads", kv_heads, minimum=1)
        if heads % kv_heads:
            raise ValueError(f"Attention kv_heads={kv_heads} must divide heads={heads}")
        qk_dim = dim if qk_dim is None else check_int("Attention qk_dim", qk_dim, minimum=1)
        for name, value in (("dim", dim), ("qk_dim", qk_dim)):
            if value % heads:
                raise ValueError(f"Attention {name}={value} must be divisible by heads={heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.qk_dim, self.qk_head_dim = qk_dim, qk_dim // heads
        self.kv_heads = kv_heads
        # channels of q, k, v over all their heads
        self.widths = (qk_dim, kv_heads * self.qk_head_dim, kv_heads * self.head_dim)
        self.pattern = parse_pattern(pattern)
        self.rope, self.rope_base, self.backend = rope, rope_base, backend
        self.rope_split = None if rope_split is None else tuple(rope_split)
        if rope and (ndim is not None or rope_split is not None):
            RoPE(self.qk_head_dim, ndim or len(rope_split), rope_base, self.rope_split)
        self.qkv = nn.Linear(dim, sum(self.widths), bias=qkv_bias)
        self.qk_norm = bool(qk_norm)
        norm = nn.LayerNorm if self.qk_norm else nn.Identity
        self.q_norm, self.k_norm = norm(self.qk_head_dim), norm(self.qk_head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, points: Points | None = None) -> torch.Tensor:
        """x [B, *grid, dim]; or, with sparse ``points`` (N tokens), x [N, dim] or
        [B, N, dim] with RoPE on the points' coordinates."""
        if points is not None:
            single = x.dim() == 2
            tokens = x[None] if single else x
            if tokens.dim() != 3 or tokens.shape[1:] != (points.num_tokens, self.dim):
                raise ValueError(
                    f"Attention on {points!r} expects x [N, dim] or [B, N, dim] with N ="
                    f" {points.num_tokens}, dim = {self.dim}; got {tuple(x.shape)}"
                )
            out = self._attend(tokens, points, points.coords_on(x.device))
            return out[0] if single else out
        if x.dim() < 3 or x.shape[-1] != self.dim:
            raise ValueError(f"Attention expects [B, *grid, dim={self.dim}], got {tuple(x.shape)}")
        grid = Grid(tuple(x.shape[1:-1]))
        out = self._attend(x.reshape(x.shape[0], -1, self.dim), grid, grid)
        return out.reshape(x.shape)

    def heads_of(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens [B, N, dim] -> q [B, heads, N, qk_head_dim], k [B, kv_heads, N,
        qk_head_dim], v [B, kv_heads, N, head_dim] (q and k normalized with ``qk_norm``)."""
        parts = self.qkv(tokens).split(self.widths, dim=-1)
        heads = (self.heads, self.kv_heads, self.kv_heads)
        pairs = zip(parts, heads, strict=True)
        q, k, v = (x.unflatten(-1, (h, -1)).transpose(1, 2) for x, h in pairs)
        return self.q_norm(q), self.k_norm(k), v

    def rotate(self, q: torch.Tensor, k: torch.Tensor, positions) -> tuple[torch.Tensor, ...]:
        """RoPE on q and k at ``positions``: a ``Grid`` (its coordinates; the tables are
        cached per grid, device and dtype) or a tensor [N, ndim] / [B, N, ndim]."""
        if not self.rope:
            return q, k
        ndim = positions.ndim if isinstance(positions, Grid) else positions.shape[-1]
        rope = RoPE(self.qk_head_dim, ndim, self.rope_base, self.rope_split)
        if isinstance(positions, Grid):
            tables = rope_tables(rope, positions.shape, q.device, q.dtype)
        else:
            tables = rope.tables(positions, q.device, q.dtype)
        return rope.apply(q, tables), rope.apply(k, tables)

    def _attend(self, tokens: torch.Tensor, layout: Grid | Points, positions) -> torch.Tensor:
        """The core of every layout: qkv, RoPE, ``attend``, output projection; [B, N, dim]."""
        q, k, v = self.heads_of(tokens)
        q, k = self.rotate(q, k, positions)
        out = attend(q, k, v, self.pattern, layout, backend=self.backend, scale=self.scale)
        return self.proj(out.transpose(1, 2).flatten(2))

    def forward_merged(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        sizes: torch.Tensor,
        received: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Full attention over reduced tokens that no longer form a grid (ToMe, EViT).

        x [B, N, dim], positions [B, N, ndim] (float: size-weighted mean coordinates),
        sizes [B, N]. Proportional attention: log(size) of each key is added to the
        logits, so a merged token weighs as much as the tokens it stands for. Returns
        the output [B, N, dim], the keys averaged over heads [B, N, qk_head_dim] (the
        similarity metric for the next merge) and, if ``received``, the attention each
        token receives [B, N] (mean over heads and size-weighted queries; no gradient).
        """
        if self.pattern != Full():
            raise ValueError(
                f"token reduction needs full attention: reduced tokens no longer form a"
                f" grid, and {self.pattern!r} is defined on a grid"
            )
        q, k, v = self.heads_of(x)
        q, k = self.rotate(q, k, positions)
        k, v = expand_kv(k, v, self.heads)  # every query head with its group's k, v head
        bias = sizes.log().to(q.dtype)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        attention = _received_attention(q, k, bias, sizes, self.scale) if received else None
        return self.proj(out.transpose(1, 2).reshape(x.shape)), k.mean(1), attention

    def extra_repr(self) -> str:
        qk = f", qk_dim={self.qk_dim}" if self.qk_dim != self.dim else ""
        kv = f", kv_heads={self.kv_heads}" if self.kv_heads != self.heads else ""
        kv += ", qk_norm=True" if self.qk_norm else ""
        return (f"dim={self.dim}{qk}, heads={self.heads}{kv}, pattern={self.pattern!r},"
                f" rope={self.rope}")  # fmt: skip


def _received_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    bias: torch.Tensor,
    sizes: torch.Tensor,
    scale: float | None = None,
    rows: int = 1024,
) -> torch.Tensor:
    """[B, N]: softmax(q k^T * scale + bias) averaged over heads and size-weighted query
    rows, computed ``rows`` queries at a time (never the whole N x N) and without gradient."""
    b, h, n, e = q.shape
    scale = e**-0.5 if scale is None else scale
    with torch.no_grad():
        total = q.new_zeros(b, k.shape[-2])
        for start in range(0, n, rows):
            probs = (q[:, :, start : start + rows] @ k.transpose(-1, -2) * scale + bias).softmax(-1)
            total += (probs * sizes[:, None, start : start + rows, None]).sum((1, 2))
        return total / (h * sizes.sum(-1, keepdim=True))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear on the last axis."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype)
        return x * keep.bernoulli_(1.0 - self.p) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    Input and output: [B, *grid, dim].
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        pattern: Pattern | str = "full",
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        rope: bool = True,
        qkv_bias: bool = True,
        **attention_options,
    ) -> None:
        super().__init__()
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(
            dim, heads, pattern, rope=rope, qkv_bias=qkv_bias, **attention_options
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        points: Points | None = None,
        *,
        merged: MergedTokens | None = None,
    ) -> torch.Tensor:
        """x [B, *grid, dim]; with sparse ``points``, x [N, dim] or [B, N, dim]; with
        ``merged`` (reduced tokens, full attention only), x [B, N, dim]: the attention's
        merge metric and received attention are left in ``merged``."""
        if points is not None and x.dim() == 2:  # one sample: drop_path acts on all of it
            return self.forward(x[None], points)[0]
        if merged is None:
            attended = self.attn(self.norm1(x), points)
        else:
            attended, merged.keys, merged.received = self.attn.forward_merged(
                self.norm1(x), merged.positions, merged.sizes, received=merged.want_received
            )
        x = x + self.drop_path(attended)
        return x + self.drop_path(self.mlp(self.norm2(x)))


@dataclass
class MergedTokens:
    """Reduced tokens for ``Block.forward(x, merged=...)``: their positions [B, N, ndim]
    (float) and sizes [B, N]; the block fills in ``keys`` [B, N, qk_head_dim] (the next
    merge's metric) and, if ``want_received``, ``received`` [B, N]."""

    positions: torch.Tensor
    sizes: torch.Tensor
    want_received: bool = False
    keys: torch.Tensor | None = None
    received: torch.Tensor | None = None
