"""ndformer: transformers for N-dimensional data with exact efficient attention patterns.

The public API:

- layouts: ``Grid``
- patterns: ``ndformer.patterns`` (``Window``, ``Neighborhood``, ...), ``pattern(spec)``
- ``attend(q, k, v, pattern, layout)``: attention under a pattern, fast and exact
- modules: ``RoPE``, ``PatchEmbed``, ``Attention``, ``Block``; ``patchify`` / ``unpatchify``
"""

from . import patterns
from .attend import attend
from .layers import Attention, Block, DropPath, Mlp
from .layout import Grid
from .patterns import list_patterns, pattern
from .position import RoPE
from .tokens import PatchEmbed, patchify, unpatchify

__version__ = "0.1.0.dev0"

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "Grid",
    "Mlp",
    "PatchEmbed",
    "RoPE",
    "__version__",
    "attend",
    "list_patterns",
    "patchify",
    "pattern",
    "patterns",
    "unpatchify",
]
