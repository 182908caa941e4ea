"""SegFormer3D (Perera et al., CVPR Workshops 2024) for dense segmentation of volumes,
written once for 1-3 spatial axes (``segformer``).

A four-stage Mix Transformer encoder — overlapping patch merging (a strided
convolution of kernel ``2 * stride - 1``: 7/4 then 3/2), blocks of efficient
self-attention (keys and values from the tokens reduced by a learned ``sr``-strided
patch convolution and a LayerNorm) and Mix-FFN (a depthwise convolution between the
two linear layers: the position information, there is no position code) — and the
all-MLP decoder: every stage projected to ``decoder_dim``, upsampled to the first
stage's grid, concatenated, fused, classified, and upsampled to the input size.

``pattern`` other than ``full`` replaces the reduced attention of the stages that reduce
(``sr_ratios`` > 1, the large grids) by ndformer attention under that pattern on the
stage's grid (``pooled(4)``: keys averaged over 4^3 blocks, PVT's parameter-free
reduction; ``neighborhood(3)``, ...); the small last stages keep global attention. So
the arena compares patterns inside the same network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_per_axis
from ..layers import Attention, DropPath
from .base import NdModel, cycled, register_arch
from .config import ModelConfig, register_config, register_model

#: PyTorch's convolutions per number of spatial axes (and the matching interpolation).
CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


@register_config("segformer")
@dataclass
class SegformerConfig(ModelConfig):
    """``segformer``: ``dims``, ``depth``, ``heads`` and ``sr_ratios`` per stage (``dim``
    is the first stage's width, ``patch`` its stride; later stages stride 2);
    ``decoder_dim`` and ``decoder_dropout`` of the all-MLP decoder. Dense head only,
    1-3 spatial axes."""

    dims: tuple[int, ...] = (32, 64, 160, 256)
    sr_ratios: tuple[int, ...] = (4, 2, 1, 1)
    decoder_dim: int = 256
    decoder_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._staged()
        if not 1 <= self.ndim <= 3:
            raise ValueError(
                f"segformer takes 1-3 spatial axes (PyTorch convolutions), got ndim={self.ndim}"
            )
        if self.head != "segmentation":
            raise ValueError(f"segformer segments: head must be 'segmentation', got {self.head!r}")
        if not isinstance(self.patch, int):
            raise ValueError(
                f"segformer patch is the first stage's stride (an int), got {self.patch}"
            )
        self.dims = tuple(check_per_axis("dims", tuple(self.dims), minimum=1))
        self.sr_ratios = tuple(check_per_axis("sr_ratios", tuple(self.sr_ratios), minimum=1))
        for name, values in (("dims", self.dims), ("sr_ratios", self.sr_ratios)):
            if len(values) != self.num_stages:
                raise ValueError(
                    f"{name} {values} must have one entry per stage (depth {self.depth})"
                )
        if self.dims[0] != self.dim:
            raise ValueError(f"dim ({self.dim}) must equal dims[0] ({self.dims[0]})")
        for s, (width, heads) in enumerate(zip(self.dims, self.heads, strict=True)):
            if width % heads:
                raise ValueError(f"dims[{s}]={width} must be divisible by heads[{s}]={heads}")
        if not 0.0 <= self.decoder_dropout < 1.0:
            raise ValueError(f"decoder_dropout must be in [0, 1), got {self.decoder_dropout}")


class Conv(nn.Module):
    """Convolution over the grid of channels-last tokens, any of 1-3 axes:
    [B, *grid, in] -> [B, *out_grid, out] (PyTorch's kernel of that many axes)."""

    def __init__(
        self, ndim: int, dims: tuple[int, int], kernel: int, stride: int = 1, padding: int = 0,
        groups: int = 1, bias: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.ndim, self.stride, self.padding, self.groups = ndim, stride, padding, groups
        fan_out = kernel**ndim * dims[1] // groups
        self.weight = nn.Parameter(
            torch.randn(dims[1], dims[0] // groups, *(kernel,) * ndim) * math.sqrt(2.0 / fan_out)
        )
        self.bias = nn.Parameter(torch.zeros(dims[1])) if bias else None

    def forward_flops(self, args, output: torch.Tensor) -> float:
        """FLOPs of a forward (2 per multiply-add), for the arena's cost counts."""
        return 2.0 * output.numel() * self.weight[0].numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = CONVOLUTIONS[self.ndim](
            x.movedim(-1, 1), self.weight, self.bias, self.stride, self.padding, 1, self.groups
        )
        return out.movedim(1, -1)


class ChannelBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of [B, *grid, C] (statistics over batch and grid), the
    N-D BatchNorm of the convolutions it follows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class OverlapMerging(nn.Module):
    """Overlapping patch merging: [B, *grid, in] -> [B, *ceil(grid / stride), out] by a
    convolution of kernel ``2 * stride - 1`` (padding ``stride - 1``), then LayerNorm."""

    def __init__(self, ndim: int, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv = Conv(ndim, (in_dim, out_dim), 2 * stride - 1, stride, stride - 1)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class ReducedAttention(nn.Module):
    """SegFormer's efficient self-attention on [B, *grid, dim]: every query attends every
    token of the grid reduced by ``sr`` per axis (a learned patch convolution of kernel
    and stride ``sr``, the grid zero-padded to a multiple of it, then LayerNorm);
    ``sr = 1`` is plain global attention."""

    def __init__(self, ndim: int, dim: int, heads: int, sr: int) -> None:
        super().__init__()
        self.heads, self.sr = heads, sr
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.reduce = Conv(ndim, (dim, dim), sr, sr)
            self.norm = nn.LayerNorm(dim)

    def attention_flops(self, args) -> float:
        """FLOPs of the scores and the weighted sum (q . k and p . v) of a forward on
        ``args[0]`` [B, *grid, dim], for the arena's attention counts."""
        x = args[0]
        queries = x[0, ..., 0].numel()
        keys = math.prod(-(-n // self.sr) for n in x.shape[1:-1])
        return 4.0 * x.shape[0] * queries * keys * x.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, dim = x.shape[0], x.shape[-1]
        tokens = x.reshape(b, -1, dim)
        keys = x
        if self.sr > 1:
            pad = [p for n in reversed(x.shape[1:-1]) for p in (0, -n % self.sr)]
            keys = self.norm(self.reduce(F.pad(x.movedim(-1, 1), pad).movedim(1, -1)))
        q = self.q(tokens).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = (
            self.kv(keys.reshape(b, -1, dim))
            .unflatten(-1, (2, self.heads, -1))
            .permute(2, 0, 3, 1, 4)
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(tokens.shape)
        return self.proj(out).reshape(x.shape)


class MixFfn(nn.Module):
    """Mix-FFN: Linear -> depthwise 3^ndim convolution + BatchNorm -> GELU -> Linear."""

    def __init__(self, ndim: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.conv = Conv(ndim, (hidden, hidden), 3, padding=1, groups=hidden)
        self.norm = ChannelBatchNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.norm(self.conv(self.fc1(x)))))


class MixBlock(nn.Module):
    """``x + attn(LN(x))`` then ``x + mix_ffn(LN(x))`` on [B, *grid, dim]; ``attn`` is
    ``ReducedAttention`` for the pattern ``full`` or ``sr = 1``, else ndformer
    ``Attention`` under ``pattern``."""

    def __init__(
        self, c: SegformerConfig, dim: int, heads: int, sr: int, pattern: str, drop_path: float
    ) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        if pattern == "full" or sr == 1:
            self.attn: nn.Module = ReducedAttention(c.ndim, dim, heads, sr)
        else:
            self.attn = Attention(dim, heads, pattern, rope=c.rope, ndim=c.ndim)
        self.mlp = MixFfn(c.ndim, dim, int(dim * c.mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """[B, *grid, C] -> [B, *size, C], (bi/tri)linear, corners not aligned."""
    if tuple(x.shape[1:-1]) == tuple(size):
        return x
    mode = INTERPOLATION[x.dim() - 2]
    return F.interpolate(x.movedim(-1, 1), size=size, mode=mode, align_corners=False).movedim(1, -1)


class SegformerHead(nn.Module):
    """The decoder's classifier: [B, *grid, decoder_dim] -> logits [B, classes, *size]
    (a 1x1 convolution, then linear upsampling to the input size)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
        out = self.fc(x)
        return resize(out, size).movedim(-1, 1) if size is not None else out.movedim(-1, 1)


@register_arch("segformer")
class Segformer(NdModel):
    """SegFormer3D: [B, in_chans, *spatial] -> [B, num_classes, *spatial] (see the module)."""

    def __init__(self, config: SegformerConfig) -> None:
        super().__init__(config)
        c = config
        rates = iter(torch.linspace(0, c.drop_path, sum(c.depth)).tolist())
        widths = (c.in_chans, *c.dims)
        self.merges, self.stages, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for s, (depth, heads, sr) in enumerate(zip(c.depth, c.heads, c.sr_ratios, strict=True)):
            stride = c.patch if s == 0 else 2
            self.merges.append(OverlapMerging(c.ndim, widths[s], widths[s + 1], stride))
            blocks = [
                MixBlock(c, widths[s + 1], heads, sr, spec, next(rates))
                for spec in cycled(c.pattern, depth)
            ]
            self.stages.append(nn.Sequential(*blocks))
            self.norms.append(nn.LayerNorm(widths[s + 1]))
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Linear(d, c.decoder_dim), nn.LayerNorm(c.decoder_dim)) for d in c.dims
        )
        self.fuse = nn.Sequential(
            nn.Linear(c.num_stages * c.decoder_dim, c.decoder_dim, bias=False),
            ChannelBatchNorm(c.decoder_dim),
            nn.ReLU(),
            nn.Dropout(c.decoder_dropout),
        )
        self.num_features = c.decoder_dim
        self._make_head()
        self.apply(_init)

    def _make_head(self) -> None:
        self.head = SegformerHead(self.num_features, self.config.num_classes)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's stage outputs [B, *grid_s, dims[s]] (grids shrink by the strides)."""
        x = x.movedim(1, -1)
        outputs = []
        for merge, stage, norm in zip(self.merges, self.stages, self.norms, strict=True):
            x = norm(stage(merge(x)))
            outputs.append(x)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The fused decoder features [B, *grid_0, decoder_dim] at the first stage's grid."""
        outputs = self.forward_stages(x)
        grid = tuple(outputs[0].shape[1:-1])
        levels = [
            resize(lateral(out), grid) for out, lateral in zip(outputs, self.lateral, strict=True)
        ]
        return self.fuse(torch.cat(levels[::-1], dim=-1))


def _init(module: nn.Module) -> None:
    """SegFormer's initialisation: truncated-normal linear weights (std 0.02), zero biases;
    convolutions are initialised by ``Conv`` (He, fan-out)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


_SEGFORMER3D = dict(ndim=3, in_chans=4, num_classes=3, head="segmentation", patch=4, rope=False,
                    mlp_ratio=4.0, depth=(2, 2, 2, 2), heads=(1, 2, 5, 8))  # fmt: skip
#: The published SegFormer3D (BraTS: 4 MRI channels, 3 tumour classes), ~4.5 M parameters.
register_model("segformer3d-tiny", "segformer", **_SEGFORMER3D, dim=32, dims=(32, 64, 160, 256),
               sr_ratios=(4, 2, 1, 1), decoder_dim=256)  # fmt: skip
#: Not in the SegFormer3D paper (it has one size): the same network at the widths of
#: SegFormer's MiT-B1, the next 2-D size up, with the 3-D reduction ratios of -tiny.
register_model("segformer3d-small", "segformer", **_SEGFORMER3D, dim=64, dims=(64, 128, 320, 512),
               sr_ratios=(4, 2, 1, 1), decoder_dim=256)  # fmt: skip
