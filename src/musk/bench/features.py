"""Image features of a dataset split, extracted once and cached on disk.

A cache entry is keyed by the model adapter's identity (model, weights SHA-256, transform, precision), the
feature kind, ``ms_aug``, the dataset name, split, root folder and a fingerprint of its item list. Any change
of these gives a new entry, so linear probes and kNN over many seeds and shots reuse one extraction, and a
changed checkpoint or ``--ms_aug`` is never served stale features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..files import atomic_path
from ..images import ImageLoadError, collate_images
from ..messages import listing
from .data import BenchData, TransformedImages
from .models import FEATURE_KINDS, ModelAdapter

logger = logging.getLogger(__name__)
NEWLINE_INDENT = "\n  "


def cache_key(adapter: ModelAdapter, data: BenchData, kind: str, ms_aug: bool) -> dict:
    """Everything the features of ``data`` depend on."""
    return {
        **adapter.identity(),
        "kind": kind,
        "ms_aug": bool(ms_aug and kind == "probe"),
        "dataset": data.name,
        "split": data.split,
        "root": str(getattr(data.images, "root", "")),
        "items": len(data.images),
        "fingerprint": data.images.fingerprint(),
    }


class FeatureStore:
    """Features by (model, dataset split, kind): computed once per process, and kept in ``cache_dir`` (when
    given) across processes. Loading options (``batch_size``, ``num_workers``) do not change features."""

    def __init__(
        self,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = False,
    ):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        self._memory: dict[str, np.ndarray] = {}
        self.extractions = 0  # how many times images were actually encoded (not served from a cache)

    def image_features(self, adapter: ModelAdapter, data: BenchData, kind: str, ms_aug: bool = False) -> np.ndarray:
        """(N, D) float32 features of every image of ``data``.

        A file that cannot be read stops the run with an :class:`ImageLoadError` naming it: a benchmark score
        over a silently shrunken test set would not be comparable.
        """
        if kind not in FEATURE_KINDS:
            raise ValueError(f"feature kind must be one of {FEATURE_KINDS}, got {kind!r}")
        key = cache_key(adapter, data, kind, ms_aug)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        if digest in self._memory:
            return self._memory[digest]
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"{data.name}-{data.split}-{kind}-{digest}.npz"
            features = _read(path, key)
            if features is not None:
                logger.info("features of %s/%s (%s) from the cache %s", data.name, data.split, kind, path)
                self._memory[digest] = features
                return features
        features = _compute(adapter, data, kind, ms_aug, self.batch_size, self.num_workers, self.progress)
        self.extractions += 1
        if path is not None:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, features=features, key=np.array(json.dumps(key, sort_keys=True)))
            logger.info("cached features in %s", path)
        self._memory[digest] = features
        return features


def _read(path: Path, key: dict) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            if json.loads(str(stored["key"])) != key:
                logger.warning("cache file %s belongs to other settings; recomputing", path)
                return None
            return stored["features"]
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("unreadable cache file %s (%s); recomputing", path, exc)
        return None


def _compute(adapter, data, kind, ms_aug, batch_size, num_workers, progress) -> np.ndarray:
    loader = DataLoader(
        TransformedImages(data.images, adapter.transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=adapter.device.type == "cuda",
    )
    parts, failures = [], []
    desc = f"{adapter.name} {data.name}/{data.split}"
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        failures.extend(f.error for f in batch.failures)
        if len(batch.indices):
            parts.append(adapter.encode_images(batch.images, kind, ms_aug=ms_aug).cpu().numpy())
    if failures:
        raise ImageLoadError(
            f"{len(failures)} image(s) of {data.name}/{data.split} could not be read; fix or remove them:\n"
            f"  {listing(failures, sep=NEWLINE_INDENT)}"
        )
    return np.concatenate(parts).astype(np.float32)


@torch.inference_mode()
def text_embeddings(adapter: ModelAdapter, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """(T, D) unit-norm text embeddings, in batches."""
    parts = [adapter.encode_texts(texts[i : i + batch_size]).cpu().numpy() for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts).astype(np.float32)
