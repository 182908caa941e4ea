"""Attention patterns: declarative descriptions of which keys each query sees.

See ``Pattern`` for the protocol. Spec strings (``ndformer.pattern("window(8)")``)
use the lower-case names in ``list_patterns()``.
"""

from .axis import AllRule, AxisRule, CausalRule, NeighborhoodRule, PartitionRule
from .base import Pattern, Separable, list_patterns
from .compose import HeadSplit, Intersection, Union
from .keysets import HiLo, KeySetPattern, Linear, Pooled, Routing, Summary
from .local import Axial, Causal, Full, Neighborhood, Stripe, Window
from .sets import RotatedSets
from .sorted import Flattened, Serialized
from .spec import pattern

__all__ = [
    "AllRule",
    "Axial",
    "AxisRule",
    "Causal",
    "CausalRule",
    "Flattened",
    "Full",
    "HeadSplit",
    "HiLo",
    "Intersection",
    "KeySetPattern",
    "Linear",
    "Neighborhood",
    "NeighborhoodRule",
    "PartitionRule",
    "Pattern",
    "Pooled",
    "RotatedSets",
    "Routing",
    "Separable",
    "Serialized",
    "Stripe",
    "Summary",
    "Union",
    "Window",
    "list_patterns",
    "pattern",
]
