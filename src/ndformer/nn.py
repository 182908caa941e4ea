"""Drop-in attention modules for models people bring: NATTEN's and timm's constructor
conventions over channels-last tokens, and a swap of a timm-style ViT's attention for any
ndformer pattern.

- ``NeighborhoodAttention(dim, num_heads, kernel_size, dilation, stride, is_causal,
  ndim=2)`` (and ``NeighborhoodAttention1D/2D/3D``) as NATTEN's modules: x
  [B, *spatial, dim] -> [B, *spatial, dim];
- ``WindowAttention(dim, num_heads, window_size, shift_size, ndim=2)``: Swin's (shifted)
  window attention on [B, *spatial, dim], without the roll: shifted windows are offset
  windows with partial borders, which is what Swin's cyclic shift and its mask compute;
- ``PatternAttention`` / ``replace_attention(model, pattern, grid, prefix_tokens=1)``:
  replaces every timm-style ``Attention`` (``qkv``, ``proj``, ``num_heads``) of a model
  by one with the same weights whose patch tokens attend under ``pattern`` on ``grid``
  and also see the prefix tokens (CLS, registers) in the same softmax, while the prefix
  tokens attend to everything.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_int, per_axis
from .attend import BackendName, attend
from .layers import Attention
from .layout import Grid
from .patterns import Neighborhood, Pattern, Window
from .patterns import pattern as parse_pattern


class _GridAttention(Attention):
    """``Attention`` over [B, *spatial, dim] with exactly ``ndim`` spatial axes and an
    output dropout (``proj_drop``), without RoPE unless asked for."""

    def __init__(self, dim, num_heads, pattern, ndim, qkv_bias, qk_scale, proj_drop, rope,
                 backend) -> None:  # fmt: skip
        check_int(f"{type(self).__name__} ndim", ndim, minimum=1)
        super().__init__(dim, num_heads, pattern, rope=rope, qkv_bias=qkv_bias,
                         ndim=ndim if rope else None, backend=backend,
                         scale=qk_scale)  # fmt: skip
        self.ndim = ndim
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, *spatial, dim] with ``ndim`` spatial axes -> the same shape."""
        if x.dim() != self.ndim + 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects x [B, *spatial, dim] with {self.ndim} spatial"
                f" axes and dim = {self.dim}; got {tuple(x.shape)}"
            )
        return self.proj_drop(super().forward(x))


class NeighborhoodAttention(_GridAttention):
    """Neighborhood attention with NATTEN's constructor: every query attends to the
    ``kernel_size`` nearest keys per axis (windows shift inward at borders), keys
    ``dilation`` apart, queries in groups of ``stride`` sharing one neighborhood, causal
    axes where ``is_causal`` (see ``patterns.Neighborhood``). Each argument is an int or a
    per-axis tuple. x [B, *spatial, dim] (``ndim`` spatial axes) -> the same shape.
    ``qk_scale`` overrides ``1 / sqrt(head_dim)``; ``rope=True`` adds N-D RoPE (NATTEN has
    none)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int | tuple[int, ...],
        dilation: int | tuple[int, ...] = 1,
        stride: int | tuple[int, ...] = 1,
        is_causal: bool | tuple[bool, ...] = False,
        *,
        ndim: int = 2,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        rope: bool = False,
        backend: BackendName = "auto",
    ) -> None:
        pattern = Neighborhood(kernel_size, dilation=dilation, causal=is_causal, stride=stride)
        super().__init__(dim, num_heads, pattern, ndim, qkv_bias, qk_scale, proj_drop, rope,
                         backend)  # fmt: skip


class NeighborhoodAttention1D(NeighborhoodAttention):
    """``NeighborhoodAttention`` on [B, L, dim]."""

    def __init__(self, dim: int, num_heads: int, kernel_size, **kwargs) -> None:
        super().__init__(dim, num_heads, kernel_size, ndim=1, **kwargs)


class NeighborhoodAttention2D(NeighborhoodAttention):
    """``NeighborhoodAttention`` on [B, H, W, dim]."""

    def __init__(self, dim: int, num_heads: int, kernel_size, **kwargs) -> None:
        super().__init__(dim, num_heads, kernel_size, ndim=2, **kwargs)


class NeighborhoodAttention3D(NeighborhoodAttention):
    """``NeighborhoodAttention`` on [B, D, H, W, dim]."""

    def __init__(self, dim: int, num_heads: int, kernel_size, **kwargs) -> None:
        super().__init__(dim, num_heads, kernel_size, ndim=3, **kwargs)


class WindowAttention(_GridAttention):
    """Swin's window attention with timm's argument names on [B, *spatial, dim]: tokens
    attend within non-overlapping windows of ``window_size``; ``shift_size`` shifts them as
    Swin does (it rolls the grid by ``-shift_size`` and masks the wrapped tokens apart), so
    windows start at ``shift_size`` with a partial window in front: a token at c is in
    window ``(c - shift_size) // window_size`` — ``Window(window_size, shift=window_size -
    shift_size)``, without the roll or the mask. Windows need not divide the grid (border
    windows are smaller). Each size is an int or a per-axis tuple. No relative position
    bias (``rope=True`` adds N-D RoPE instead)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | tuple[int, ...] = 7,
        shift_size: int | tuple[int, ...] = 0,
        *,
        ndim: int = 2,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        rope: bool = False,
        backend: BackendName = "auto",
    ) -> None:
        pattern = Window(window_size, shift=_swin_shift(window_size, shift_size, ndim))
        super().__init__(dim, num_heads, pattern, ndim, qkv_bias, qk_scale, proj_drop, rope,
                         backend)  # fmt: skip


def _swin_shift(window, shift, ndim: int) -> tuple[int, ...]:
    """Swin's shift (windows start at ``shift``) as ``Window``'s (tokens move by it)."""
    windows = per_axis("WindowAttention window_size", window, ndim)
    shifts = per_axis("WindowAttention shift_size", shift, ndim)
    for w, s in zip(windows, shifts, strict=True):
        if not (isinstance(w, int) and isinstance(s, int) and w >= 1 and 0 <= s < w):
            raise ValueError(f"WindowAttention needs window_size >= 1 and 0 <= shift_size <"
                             f" window_size per axis; got {window=}, {shift=}")  # fmt: skip
    return tuple((w - s) % w for w, s in zip(windows, shifts, strict=True))


class PatternAttention(nn.Module):
    """Attention over ``prefix_tokens`` leading tokens followed by a ``grid`` of tokens
    (timm's ViT layout: [B, prefix + prod(grid), dim]).

    Grid tokens attend under ``pattern`` on ``grid`` and to every prefix token, in one
    softmax (``attend``'s extra tokens); prefix tokens attend to all tokens. With
    ``pattern="full"`` this is plain attention. ``qkv`` (dim -> 3 dim), ``q_norm``,
    ``k_norm``, ``proj`` and ``proj_drop`` are modules as in timm's ``Attention``;
    ``from_timm`` reuses an existing module's (the weights are shared, not copied).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        pattern: Pattern | str,
        grid: Grid | tuple[int, ...],
        prefix_tokens: int = 1,
        *,
        qkv_bias: bool = True,
        scale: float | None = None,
        backend: BackendName = "auto",
    ) -> None:
        super().__init__()
        check_int("PatternAttention dim", dim, minimum=1)
        check_int("PatternAttention num_heads", num_heads, minimum=1)
        check_int("PatternAttention prefix_tokens", prefix_tokens, minimum=0)
        if dim % num_heads:
            raise ValueError(f"PatternAttention dim={dim} must be divisible by {num_heads=}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5 if scale is None else float(scale)
        self.pattern = parse_pattern(pattern)
        self.grid = grid if isinstance(grid, Grid) else Grid(tuple(grid))
        self.pattern.check(self.grid)
        self.prefix_tokens, self.backend = prefix_tokens, backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.proj, self.proj_drop = nn.Linear(dim, dim), nn.Identity()

    @classmethod
    def from_timm(
        cls,
        attn: nn.Module,
        pattern: Pattern | str,
        grid: Grid | tuple[int, ...],
        prefix_tokens: int = 1,
        backend: BackendName = "auto",
    ) -> PatternAttention:
        """A ``PatternAttention`` sharing the modules of a timm-style ``Attention``
        (``qkv``, ``proj``, ``num_heads``; ``q_norm``, ``k_norm``, ``proj_drop``, ``scale``
        when present). Attention dropout on the probabilities is not supported."""
        for name in ("qkv", "proj", "num_heads"):
            if not hasattr(attn, name):
                raise ValueError(f"from_timm needs an attention module with .{name}; "
                                 f"{type(attn).__name__} has none")  # fmt: skip
        drop = getattr(attn, "attn_drop", None)
        if isinstance(drop, nn.Dropout) and drop.p > 0:
            raise ValueError(f"from_timm: attention dropout (attn_drop p={drop.p}) is not"
                             " supported; build the model with attn_drop_rate=0")  # fmt: skip
        dim = attn.qkv.in_features
        if attn.qkv.out_features != 3 * dim:
            raise ValueError(f"from_timm needs qkv: {dim} -> {3 * dim} features; got"
                             f" {attn.qkv.in_features} -> {attn.qkv.out_features}")  # fmt: skip
        new = cls(dim, attn.num_heads, pattern, grid, prefix_tokens,
                  scale=getattr(attn, "scale", None), backend=backend)  # fmt: skip
        new.qkv, new.proj = attn.qkv, attn.proj
        for name in ("q_norm", "k_norm", "proj_drop"):
            if isinstance(getattr(attn, name, None), nn.Module):
                setattr(new, name, getattr(attn, name))
        return new

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, prefix_tokens + grid tokens, dim] -> the same shape."""
        p, n = self.prefix_tokens, self.grid.num_tokens
        if x.dim() != 3 or x.shape[1:] != (p + n, self.dim):
            raise ValueError(
                f"PatternAttention expects x [B, {p} prefix + {n} grid tokens"
                f" {self.grid.shape}, dim={self.dim}]; got {tuple(x.shape)}"
            )
        if attn_mask is not None:
            raise ValueError("PatternAttention takes its mask from the pattern; got attn_mask")
        b = x.shape[0]
        q, k, v = self.qkv(x).reshape(b, p + n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        extra = {"extra_k": k[:, :, :p], "extra_v": v[:, :, :p]} if p else {}
        grid_out = attend(q[:, :, p:], k[:, :, p:], v[:, :, p:], self.pattern, self.grid,
                          scale=self.scale, backend=self.backend, **extra)  # fmt: skip
        if p:
            prefix_out = F.scaled_dot_product_attention(q[:, :, :p], k, v, scale=self.scale)
            grid_out = torch.cat([prefix_out, grid_out], dim=2)
        return self.proj_drop(self.proj(grid_out.transpose(1, 2).reshape(x.shape)))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, pattern={self.pattern!r},"
                f" grid={self.grid.shape}, prefix_tokens={self.prefix_tokens}")  # fmt: skip


def replace_attention(
    model: nn.Module,
    pattern: Pattern | str,
    grid: Grid | tuple[int, ...],
    prefix_tokens: int = 1,
    backend: BackendName = "auto",
) -> int:
    """Replace, in place, every timm-style attention module of ``model`` (one with
    ``qkv``, ``proj`` and ``num_heads``) by ``PatternAttention.from_timm`` with the same
    weights; returns how many were replaced. ``grid`` is the patch grid (timm's
    ``model.patch_embed.grid_size``) and ``prefix_tokens`` the CLS / register tokens in
    front of it (timm's ``model.num_prefix_tokens``)."""
    targets = [(name, module) for name, module in model.named_modules()
               if name and all(hasattr(module, a) for a in ("qkv", "proj", "num_heads"))
               and not isinstance(module, PatternAttention)]  # fmt: skip
    if not targets:
        raise ValueError(f"replace_attention found no attention module (with .qkv, .proj and"
                         f" .num_heads) in {type(model).__name__}")  # fmt: skip
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PatternAttention.from_timm(module, pattern, grid, prefix_tokens,
                                                          backend))  # fmt: skip
    return len(targets)


__all__ = [
    "NeighborhoodAttention",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "PatternAttention",
    "WindowAttention",
    "replace_attention",
]
