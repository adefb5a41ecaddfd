"""Embedding many images in batches: files and in-memory images, with bad files reported instead of stopping."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .files import atomic_path
from .images import DEFAULT_MAX_PIXELS, ImageDataset, ImageInput, collate_images, image_name
from .models import MUSK
from .streams import run_in_streams
from .transforms import get_transform

__all__ = ["Embeddings", "embed_images"]

logger = logging.getLogger(__name__)


@dataclass
class Embeddings:
    """Row ``i`` of ``vectors`` belongs to ``files[i]`` (a path, or ``<image k>`` for the k-th in-memory image);
    ``failed`` maps the files that did not load to why."""

    vectors: np.ndarray
    files: list[str]
    failed: dict[str, str] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        """An ``.npz`` with ``embeddings``, ``files``, ``failed_files`` and ``failed_errors``, written atomically."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                embeddings=self.vectors,
                files=np.array(self.files, dtype=str),
                failed_files=np.array(list(self.failed), dtype=str),
                failed_errors=np.array(list(self.failed.values()), dtype=str),
            )


@torch.inference_mode()
def embed_images(
    model: MUSK,
    images: Sequence[ImageInput],
    with_head: bool = False,
    normalize: bool = False,
    ms_aug: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    streams: int | None = None,
    progress: bool = False,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Embeddings:
    """Embed images (files, PIL images, uint8 arrays, preprocessed tensors) with the model's own preprocessing
    (or ``transform``); unreadable files are listed, not fatal.

    Loading and preprocessing run in ``num_workers`` DataLoader processes while the model computes.
    Each batch runs as ``streams`` concurrent calls (default: one per CPU thread on CPU, see
    :mod:`musk.streams`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dataset = ImageDataset(images, transform or get_transform(model), max_pixels)
    names = [image_name(item, i) for i, item in enumerate(dataset.items)]
    param = next(model.parameters())
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=param.device.type == "cuda",
    )

    def encode(part: torch.Tensor) -> torch.Tensor:
        return model.encode_image(part, with_head=with_head, normalize=normalize, ms_aug=ms_aug)

    vectors, files, failed = [], [], {}
    with tqdm(total=len(dataset), desc="embedding", unit="image", disable=not progress) as bar:
        for batch in loader:
            for failure in batch.failures:
                logger.warning("could not load %s: %s", names[failure.index], failure.error)
                failed[names[failure.index]] = failure.error
            if len(batch.indices):
                out = run_in_streams(encode, batch.images.to(param.device, param.dtype, non_blocking=True), streams)
                vectors.append(out.float().cpu().numpy())
                files.extend(names[i] for i in batch.indices.tolist())
            bar.update(len(batch.indices) + len(batch.failures))
    width = (2 if ms_aug and not with_head else 1) * model.embed_dim
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, width), dtype=np.float32)
    return Embeddings(matrix, files, failed)
