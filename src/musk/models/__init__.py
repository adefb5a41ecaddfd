"""MUSK model definition, timm registration and checkpoint loading."""

from .config import MuskConfig
from .musk import MUSK

__all__ = ["MUSK", "MuskConfig"]
