"""musk-pathology: MUSK, the vision-language foundation model for precision oncology."""

from .models import MUSK, MuskConfig

__version__ = "0.1.0"

__all__ = ["MUSK", "MuskConfig", "__version__"]
