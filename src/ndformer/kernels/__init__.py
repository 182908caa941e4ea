"""Fast paths (pure functions) and the reference they must equal."""

from .blocksparse import block_sparse_plan
from .blocksparse_op import block_sparse_attention
from .geometry import tile_geometry
from .reference import reference_attention
from .tiled import local_plan, tiled_attention

__all__ = [
    "block_sparse_attention",
    "block_sparse_plan",
    "local_plan",
    "reference_attention",
    "tile_geometry",
    "tiled_attention",
]
