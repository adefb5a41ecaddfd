"""musk-pathology: MUSK, the vision-language foundation model for precision oncology.

Importing the package registers ``musk_large_patch16_384`` (and a tiny test architecture) with timm.
"""

__version__ = "0.1.0"

from .embed import Embeddings  # noqa: E402
from .images import ImageLoadError, load_image  # noqa: E402
from .loaded import LoadedModel, load  # noqa: E402
from .models import (  # noqa: E402
    MUSK,
    CheckpointMismatchError,
    MuskConfig,
    WeightsUnavailableError,
    create_model,
    load_weights,
)
from .tokenizer import MuskTokenizer, get_tokenizer  # noqa: E402
from .transforms import get_transform  # noqa: E402
from .zeroshot import ZeroShotResult, class_embeddings, zero_shot_classify  # noqa: E402

__all__ = [
    "MUSK",
    "CheckpointMismatchError",
    "Embeddings",
    "ImageLoadError",
    "LoadedModel",
    "MuskConfig",
    "MuskTokenizer",
    "WeightsUnavailableError",
    "ZeroShotResult",
    "__version__",
    "class_embeddings",
    "create_model",
    "get_tokenizer",
    "get_transform",
    "load",
    "load_image",
    "load_weights",
    "zero_shot_classify",
]
