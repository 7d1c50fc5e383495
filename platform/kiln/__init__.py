"""Kiln: a model serving and lifecycle platform with a compiled inference core."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
