"""The package version (one place; ``ndformer.__version__`` re-exports it)."""

__version__ = "0.1.0.dev0"
