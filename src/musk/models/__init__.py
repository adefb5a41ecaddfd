"""MUSK model definition, timm registration and checkpoint loading."""

from . import registry  # noqa: F401  (registers the architectures with timm)
from .config import MuskConfig
from .factory import create_model
from .loading import CheckpointMismatchError, WeightsUnavailableError, load_weights
from .musk import MUSK

__all__ = [
    "MUSK",
    "CheckpointMismatchError",
    "MuskConfig",
    "WeightsUnavailableError",
    "create_model",
    "load_weights",
]
