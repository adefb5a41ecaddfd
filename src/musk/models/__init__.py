"""MUSK model definition, timm registration and checkpoint loading."""

from . import registry  # noqa: F401  (registers the architectures with timm)
from .config import MuskConfig
from .factory import create_model
from .loading import CheckpointMismatchError, load_weights
from .musk import MUSK
from .registry import DEFAULT_MODEL
from .weights import NO_WEIGHTS, PUBLISHED, ResolvedWeights, WeightsUnavailableError

__all__ = [
    "DEFAULT_MODEL",
    "MUSK",
    "NO_WEIGHTS",
    "PUBLISHED",
    "ResolvedWeights",
    "CheckpointMismatchError",
    "MuskConfig",
    "WeightsUnavailableError",
    "create_model",
    "load_weights",
]
