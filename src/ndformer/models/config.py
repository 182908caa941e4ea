"""Model configuration: one dataclass for every architecture, round-tripping through JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .._checks import check_int, check_per_axis
from ..patterns import Pattern
from ..patterns import pattern as parse_pattern

#: Architectures that segment point clouds (``PointBatch`` in, [N, classes] out).
POINT_ARCHS = ("volt", "voxconv")
HEADS = ("classification", "segmentation")

#: arch -> its config type (``register_config``, next to each model family).
CONFIGS: dict[str, type[ModelConfig]] = {}
#: model name -> its config fields, ``arch`` included (``register_model``, next to each
#: model family). Overrides go through ``create_model``.
MODELS: dict[str, dict[str, Any]] = {}


def register_config(*archs: str):
    """Class decorator: the config type of the architectures ``archs``."""

    def add(cls):
        for arch in archs:
            CONFIGS[arch] = cls
        return cls

    return add


def register_model(name: str, arch: str, **fields: Any) -> None:
    """Register the named configuration ``name`` of ``arch`` (timm-like sizes)."""
    MODELS[name] = dict(arch=arch, **fields)


def has_field(model: str, name: str) -> bool:
    """Whether the registered model ``model``'s config type has the field ``name``."""
    arch = MODELS.get(model, {}).get("arch")
    return arch in CONFIGS and name in {f.name for f in dataclasses.fields(CONFIGS[arch])}


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
    """What every architecture's config holds; ``to_json`` / ``from_json`` round-trip
    exactly, and ``from_dict`` returns the config type of the data's ``arch``.

    - ``arch``: ``vit`` (plain transformer over patch tokens), ``hvit`` (hierarchical,
      stages halve the merged axes: every axis, or space only as ``swift-tiny``),
      ``segformer`` (SegFormer3D), ``conv`` (N-D depthwise-conv network, the teacher),
      ``volt`` (point clouds through patch tokens) or ``voxconv`` (point clouds through
      a ``conv`` network over voxels, the teacher); see each config type.
    - ``head``: ``classification`` (mean-pooled tokens -> logits [B, classes]) or
      ``segmentation`` (per-token logits unpatchified to [B, classes, *spatial]).
    - ``depth`` / ``heads``: ints for plain transformers; one entry per stage for
      hierarchical ones.
    - ``pattern``: a spec, or a list of specs cycled over the blocks.
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
    drop_path: float = 0.0
    rope: bool = True
    name: str = field(default="", compare=False)

    #: The config fields every architecture shares (the rest belong to one family).
    def __post_init__(self) -> None:
        if self.arch not in CONFIGS:
            raise ValueError(f"arch must be one of {tuple(CONFIGS)}, got {self.arch!r}")
        if type(self) is not CONFIGS[self.arch]:
            expected = CONFIGS[self.arch].__name__
            raise ValueError(f"arch {self.arch!r} takes a {expected}, got {type(self).__name__}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        check_int("ndim", self.ndim, minimum=1)
        # Point models take xyz-only scenes (no features besides the coordinates).
        check_int("in_chans", self.in_chans, minimum=0 if self.arch in POINT_ARCHS else 1)
        check_int("num_classes", self.num_classes, minimum=1)
        check_int("dim", self.dim, minimum=1)
        self.patch = _tuple(check_per_axis("patch", self.patch, minimum=1))
        if isinstance(self.patch, tuple) and len(self.patch) != self.ndim:
            raise ValueError(f"patch {self.patch} has {len(self.patch)} entries, ndim={self.ndim}")
        self.depth = _tuple(check_per_axis("depth", self.depth, minimum=1))
        self.heads = _tuple(check_per_axis("heads", self.heads, minimum=1))
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        self.pattern = _spec_list("pattern", self.pattern)

    def _flat(self) -> None:
        """Plain transformers: one int depth and heads."""
        if not (isinstance(self.depth, int) and isinstance(self.heads, int)):
            raise ValueError(
                f"{self.arch} takes int depth and heads, got {self.depth!r}, {self.heads!r}"
            )

    def _staged(self) -> None:
        """Hierarchical networks: depth and heads per stage (an int heads for every stage)."""
        stages = len(self.depth) if isinstance(self.depth, tuple) else 1
        self.depth = self.depth if isinstance(self.depth, tuple) else (self.depth,)
        self.heads = self.heads if isinstance(self.heads, tuple) else (self.heads,) * stages
        if len(self.heads) != stages:
            raise ValueError(
                f"heads {self.heads} must have one entry per stage (depth {self.depth})"
            )

    def _segments_points(self) -> None:
        if self.head != "segmentation":
            raise ValueError(f"arch {self.arch!r} segments points: head must be 'segmentation'")
        voxel_size = getattr(self, "voxel_size", None)
        if isinstance(voxel_size, bool) or not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0 (metres), got {voxel_size!r}")

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
        """The config of ``data["arch"]`` (default vit). A field of another architecture is
        refused, naming the architecture it belongs to; at its default value (as older
        config.json files list every field) it is dropped."""
        arch = data.get("arch", "vit")
        if arch not in CONFIGS:
            raise ValueError(f"arch must be one of {tuple(CONFIGS)}, got {arch!r}")
        target = CONFIGS[arch]
        names = {f.name for f in dataclasses.fields(target)}
        kept = {}
        for key, value in data.items():
            if key in names:
                kept[key] = value
                continue
            owners = [
                a for a, c in CONFIGS.items() if key in {f.name for f in dataclasses.fields(c)}
            ]
            if not owners:
                raise ValueError(f"unknown model config keys {[key]}; valid: {sorted(names)}")
            default = next(
                f for f in dataclasses.fields(CONFIGS[owners[0]]) if f.name == key
            ).default
            if value != default:
                raise ValueError(
                    f"{key}={value!r} needs arch {' or '.join(repr(a) for a in owners)};"
                    f" arch {arch!r} has no {key}"
                )
        return target(**kept)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def _field_defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value
