"""ndformer: transformers for N-dimensional data with exact efficient attention patterns.

The public API:

- layouts: ``Grid``, sparse ``Points``; ``serialize`` (space-filling-curve codes)
- patterns: ``ndformer.patterns`` (``Window``, ``Neighborhood``, ...), ``pattern(spec)``
- ``attend(q, k, v, pattern, layout)``: attention under a pattern, fast and exact;
  ``merge_attentions`` combines (output, log-sum-exp) pairs over disjoint key sets
- models: ``create_model(name, **overrides)``, ``list_models()``, ``load(run_dir)``
- modules: ``RoPE``, ``PatchEmbed``, ``Attention``, ``Block``; ``patchify`` / ``unpatchify``
"""

from . import patterns
from ._version import __version__
from .attend import attend
from .curves import serialize
from .kernels.merge import merge_attentions
from .layers import Attention, Block, DropPath, Mlp
from .layout import Grid, Points
from .models import create_model, list_models
from .patterns import list_patterns, pattern
from .point_tokens import PointTokenizer, PointTokens
from .position import RoPE
from .tokens import PatchEmbed, patchify, unpatchify
from .train import load

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "Grid",
    "Mlp",
    "PatchEmbed",
    "PointTokenizer",
    "PointTokens",
    "Points",
    "RoPE",
    "__version__",
    "attend",
    "create_model",
    "list_models",
    "list_patterns",
    "load",
    "merge_attentions",
    "patchify",
    "pattern",
    "patterns",
    "serialize",
    "unpatchify",
]
