"""The model of a job's extract and heatmap stages, loaded once through :func:`musk.load`.

Weights and tokenizer are found by the library's rules (``--weights none``: random initialisation seeded by
the job's seed; the tokenizer: the one given, else ``tokenizer.spm`` beside local weights, else the hub's), the
tokenizer before the model loads so that a missing one stops the job at once. The weights fingerprint recorded
in ``config.json`` and every feature file is the loaded model's (:attr:`musk.LoadedModel.fingerprint`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..files import file_sha256
from ..loaded import LoadedModel, load
from ..models.registry import published_source
from ..models.weights import resolve
from ..runtime import seed_everything
from ..tokenizer import find_tokenizer
from .config import WsiJobConfig

__all__ = ["JobModel", "load_job_model"]

logger = logging.getLogger(__name__)


@dataclass
class JobModel:
    """The loaded model, and for the heatmap stage the class embeddings and the tokenizer file's sha256."""

    loaded: LoadedModel
    class_embeddings: torch.Tensor | None = None
    tokenizer_sha256: str | None = None

    @property
    def weights_sha256(self) -> str:
        return self.loaded.weights_sha256

    def tokenizer_record(self) -> dict | None:
        """The tokenizer's file and sha256, for ``config.json`` (None without the heatmap stage)."""
        if self.tokenizer_sha256 is None:
            return None
        return {"path": str(self.loaded.tokenizer.model_file), "sha256": self.tokenizer_sha256}


def load_job_model(config: WsiJobConfig, stages: Sequence[str], device: str | torch.device) -> JobModel:
    """The job's model on ``device`` (and its class embeddings when ``stages`` include the heatmap)."""
    weights = resolve(config.weights, published_source(config.model), config.cache_dir)
    heatmap = "heatmap" in stages
    tokenizer = find_tokenizer(config.tokenizer, weights, config.cache_dir) if heatmap else None
    seed_everything(config.seed)
    loaded = load(config.model, weights, device, config.precision, tokenizer, config.cache_dir, config.seed)
    logger.info("model %s, weights sha256 %s", loaded, loaded.weights_sha256[:12])
    if not heatmap:
        return JobModel(loaded)
    classes = loaded.class_embeddings(list(config.classes), list(config.templates))
    return JobModel(loaded, classes, file_sha256(loaded.tokenizer.model_file))
