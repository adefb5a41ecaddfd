"""Compatibility with the upstream ``musk.modeling`` module: importing it registers the timm models.

The implementation lives in :mod:`musk.models`.
"""

from .models.musk import MUSK
from .models.registry import musk_large_patch16_384, musk_tiny_patch16_64

__all__ = ["MUSK", "musk_large_patch16_384", "musk_tiny_patch16_64"]
