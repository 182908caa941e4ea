"""Model configuration: one dataclass for every architecture, round-tripping through JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .._checks import check_int, check_per_axis
from ..patterns import Full, Pattern
from ..patterns import pattern as parse_pattern

ARCHS = ("vit", "hvit", "conv", "volt", "voxconv")
#: Architectures that segment point clouds (``PointBatch`` in, [N, classes] out).
POINT_ARCHS = ("volt", "voxconv")
HEADS = ("classification", "segmentation")

PatternSpec = str | list[str]


def _spec_list(name: str, value: Any) -> PatternSpec:
    """Normalise a pattern argument to a spec string or a list of spec strings (validated)."""
    if isinstance(value, (str, Pattern)):
        return repr(parse_pattern(value)) if isinstance(value, Pattern) else _checked(name, value)
    if isinstance(value, (list, tuple)) and value:
        return [_spec_list(f"{name}[{i}]", v) for i, v in enumerate(value)]  # type: ignore[misc]
    raise ValueError(f"{name} must be a pattern spec or a non-empty list of specs, got {value!r}")


def _checked(name: str, spec: str) -> str:
    try:
        parse_pattern(spec)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    return spec


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; ``to_json`` / ``from_json`` round-trip exactly.

    - ``arch``: ``vit`` (plain transformer over patch tokens), ``hvit`` (hierarchical,
      stages halve every axis) or ``conv`` (N-D depthwise-conv network, the teacher).
    - ``volt`` (point clouds: ``PointTokenizer`` patch tokens of ``patch`` voxels of
      ``voxel_size`` metres, blocks on their ``Points`` layout, per-point logits) and
      ``voxconv`` (point clouds through a ``conv`` network over voxels, the teacher).
    - ``head``: ``classification`` (mean-pooled tokens -> logits [B, classes]) or
      ``segmentation`` (per-token logits unpatchified to [B, classes, *spatial]).
    - ``depth`` / ``heads``: ints for ``vit``; one entry per stage for ``hvit``/``conv``.
    - ``pattern``: a spec, or a list of specs cycled over the blocks (over the blocks
      of every stage for ``hvit``); ``stage_patterns`` sets one spec or list per stage.
    - ``token_merging``: ToMe's r, tokens merged after every block (``vit`` with full
      attention only: merged tokens no longer form a grid).
    - ``keep_rate``: EViT's keep rate (1.0 = off). After 1/4, 1/2 and 3/4 of the blocks,
      the ``ceil(keep_rate * n)`` most attended of the n tokens stay and the rest fuse
      into one token (``vit`` with full attention only, not with ``token_merging``).
    """

    arch: str = "vit"
    ndim: int = 2
    in_chans: int = 1
    num_classes: int = 10
    head: str = "classification"
    patch: int | tuple[int, ...] = 4
    dim: int = 192
    depth: int | tuple[int, ...] = 12
    heads: int | tuple[int, ...] = 3
    mlp_ratio: float = 4.0
    pattern: PatternSpec = "full"
    stage_patterns: list[PatternSpec] | None = None
    drop_path: float = 0.0
    rope: bool = True
    kernel: int = 3
    token_merging: int = 0
    keep_rate: float = 1.0
    voxel_size: float = 0.1
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        check_int("ndim", self.ndim, minimum=1)
        # Point models take xyz-only scenes (no features besides the coordinates).
        check_int("in_chans", self.in_chans, minimum=0 if self.arch in POINT_ARCHS else 1)
        check_int("num_classes", self.num_classes, minimum=1)
        check_int("dim", self.dim, minimum=1)
        check_int("kernel", self.kernel, minimum=1)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel}")
        self.patch = _tuple(check_per_axis("patch", self.patch, minimum=1))
        if isinstance(self.patch, tuple) and len(self.patch) != self.ndim:
            raise ValueError(f"patch {self.patch} has {len(self.patch)} entries, ndim={self.ndim}")
        self.depth = _tuple(check_per_axis("depth", self.depth, minimum=1))
        self.heads = _tuple(check_per_axis("heads", self.heads, minimum=1))
        flat = self.arch in ("vit", "volt")
        if flat and not (isinstance(self.depth, int) and isinstance(self.heads, int)):
            raise ValueError(
                f"{self.arch} takes int depth and heads, got {self.depth!r}, {self.heads!r}"
            )
        if self.arch in POINT_ARCHS:
            self._check_points()
        if not flat:
            stages = len(self.depth) if isinstance(self.depth, tuple) else 1
            self.depth = self.depth if isinstance(self.depth, tuple) else (self.depth,)
            self.heads = self.heads if isinstance(self.heads, tuple) else (self.heads,) * stages
            if len(self.heads) != stages:
                raise ValueError(
                    f"heads {self.heads} must have one entry per stage (depth {self.depth})"
                )
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        self.pattern = _spec_list("pattern", self.pattern)
        check_int("token_merging", self.token_merging, minimum=0)
        if isinstance(self.keep_rate, bool) or not 0.0 < self.keep_rate <= 1.0:
            raise ValueError(f"keep_rate must be in (0, 1] (1 = off), got {self.keep_rate!r}")
        self._check_token_reduction()
        if self.stage_patterns is not None:
            if self.arch != "hvit" or len(self.stage_patterns) != self.num_stages:
                raise ValueError(
                    f"stage_patterns needs arch 'hvit' and one entry per stage"
                    f" ({self.num_stages}), got {self.stage_patterns!r} for arch {self.arch!r}"
                )
            self.stage_patterns = [
                _spec_list(f"stage_patterns[{i}]", p) for i, p in enumerate(self.stage_patterns)
            ]

    def _check_points(self) -> None:
        if self.head != "segmentation":
            raise ValueError(f"arch {self.arch!r} segments points: head must be 'segmentation'")
        if isinstance(self.voxel_size, bool) or not self.voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0 (metres), got {self.voxel_size!r}")
        if self.arch == "volt" and isinstance(self.patch, tuple) and len(set(self.patch)) > 1:
            raise ValueError(f"volt takes one patch size for every axis, got {self.patch}")

    def _check_token_reduction(self) -> None:
        """Reduced tokens no longer form a grid: only full attention in a plain vit follows."""
        used = {"token_merging": self.token_merging} if self.token_merging else {}
        if self.keep_rate < 1.0:
            used["keep_rate"] = self.keep_rate
        if not used:
            return
        if len(used) > 1:
            raise ValueError(
                f"token_merging={self.token_merging} and keep_rate={self.keep_rate} are two"
                " token reductions; choose one"
            )
        ((option, value),) = used.items()
        specs = [self.pattern] if isinstance(self.pattern, str) else self.pattern
        grid_only = [s for s in specs if parse_pattern(s) != Full()]
        if self.arch != "vit" or grid_only:
            raise ValueError(
                f"{option}={value} needs arch 'vit' with full attention: reduced tokens no"
                f" longer form a grid, so grid patterns {grid_only} (arch {self.arch!r})"
                " cannot follow a reduction"
            )

    @property
    def num_stages(self) -> int:
        return len(self.depth) if isinstance(self.depth, tuple) else 1

    @property
    def patch_tuple(self) -> tuple[int, ...]:
        return self.patch if isinstance(self.patch, tuple) else (self.patch,) * self.ndim

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


VOLT_TINY_DIM = 128

_HVIT_TINY: dict[str, Any] = dict(
    arch="hvit",
    dim=96,
    depth=(2, 2, 6, 2),
    heads=(3, 6, 12, 24),
    pattern=["window(7)", "window(7, shift=3)"],
)

#: Named configurations (timm-like sizes). Overrides go through ``create_model``.
MODELS: dict[str, dict[str, Any]] = {
    "vit-tiny": dict(arch="vit", dim=192, depth=12, heads=3),
    "vit-small": dict(arch="vit", dim=384, depth=12, heads=6),
    "vit-base": dict(arch="vit", dim=768, depth=12, heads=12),
    "hvit-tiny": _HVIT_TINY,
    "hvit-small": {**_HVIT_TINY, "depth": (2, 2, 18, 2)},
    "conv-tiny": dict(arch="conv", dim=32, depth=(2, 2, 2, 2), heads=1, patch=2),
    "volt-tiny": dict(
        arch="volt", ndim=3, head="segmentation", dim=VOLT_TINY_DIM, depth=6, heads=4, patch=4
    ),
    "volt-small": dict(
        arch="volt", ndim=3, head="segmentation", dim=256, depth=12, heads=8, patch=4
    ),
    "voxconv-tiny": dict(
        arch="voxconv", ndim=3, head="segmentation", dim=32, depth=(2, 2, 2, 2), heads=1, patch=2
    ),
}
