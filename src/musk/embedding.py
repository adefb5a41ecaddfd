"""Embedding image files in batches, with bad files reported instead of stopping the run."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .files import atomic_path
from .images import ImageFileDataset, LoadFailure, collate_images
from .models import MUSK
from .streams import run_in_streams
from .transforms import get_transform

logger = logging.getLogger(__name__)


@dataclass
class Embeddings:
    """Row ``i`` of ``vectors`` belongs to ``files[i]``; ``failed`` maps the files that did not load to why."""

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
    paths: Sequence[str | os.PathLike],
    with_head: bool = False,
    normalize: bool = False,
    ms_aug: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    streams: int | None = None,
    progress: bool = False,
) -> Embeddings:
    """Embed image files with the model's own preprocessing; unreadable files are listed, not fatal.

    Loading and preprocessing run in ``num_workers`` DataLoader processes while the model computes.
    Each batch runs as ``streams`` concurrent calls (default: one per CPU thread on CPU, see
    :mod:`musk.streams`).
    """
    paths = [Path(p) for p in paths]
    param = next(model.parameters())
    loader = DataLoader(
        ImageFileDataset(paths, get_transform(model)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=param.device.type == "cuda",
    )
    vectors, files, failed = [], [], {}
    for batch in tqdm(loader, desc="embedding", unit="batch", disable=not progress):
        for failure in batch.failures:
            _record_failure(failed, paths, failure)
        if len(batch.indices):
            images = batch.images.to(param.device, param.dtype, non_blocking=True)
            out = run_in_streams(
                lambda part: model.encode_image(part, with_head=with_head, normalize=normalize, ms_aug=ms_aug),
                images,
                streams,
            )
            vectors.append(out.float().cpu().numpy())
            files.extend(str(paths[i]) for i in batch.indices.tolist())
    width = (2 if ms_aug and not with_head else 1) * model.embed_dim
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, width), dtype=np.float32)
    return Embeddings(matrix, files, failed)


def _record_failure(failed: dict[str, str], paths: list[Path], failure: LoadFailure) -> None:
    name = str(paths[failure.index])
    logger.warning("could not load %s: %s", name, failure.error)
    failed[name] = failure.error
