"""Zero-shot cross-modal retrieval: recall@k from text to image and from image to text.

Identical caption texts are merged into one query whose positives are all their images, so a caption shared
by several images (an ARCH figure caption with several panels) and an image with several captions are both
scored correctly. Keys as upstream: ``image_retrieval_recall@k`` (text -> image) and
``text_retrieval_recall@k`` (image -> text).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data import BenchData
from ..features import FeatureStore, text_embeddings
from ..metrics import recall_at_k
from ..models import ModelAdapter


def caption_positives(captions: list[str], caption_images: np.ndarray, num_images: int):
    """``(unique texts, positives)``: positives[t, i] is True when text ``t`` is a caption of image ``i``."""
    texts = list(dict.fromkeys(captions))
    row = {text: r for r, text in enumerate(texts)}
    positives = np.zeros((len(texts), num_images), dtype=bool)
    for caption, image in zip(captions, caption_images, strict=True):
        positives[row[caption], image] = True
    return texts, positives


def retrieval_metrics(
    image_emb: np.ndarray, text_emb: np.ndarray, positives: np.ndarray, recall_k: Sequence[int]
) -> dict:
    """Recall@k both ways from unit embeddings and the (texts, images) positive matrix."""
    scores = text_emb @ image_emb.T
    text_to_image = recall_at_k(scores, positives, recall_k)
    image_to_text = recall_at_k(scores.T, positives.T, recall_k)
    metrics = {}
    for k in recall_k:
        metrics[f"image_retrieval_recall@{k}"] = text_to_image[k]
        metrics[f"text_retrieval_recall@{k}"] = image_to_text[k]
    return metrics


def evaluate(adapter: ModelAdapter, data: BenchData, store: FeatureStore, recall_k: Sequence[int] = (1, 5, 10)) -> dict:
    if data.captions is None:
        raise ValueError(f"{data.name} has no captions; zero-shot retrieval needs an image-caption dataset")
    images = store.image_features(adapter, data, "embedding")
    texts, positives = caption_positives(data.captions, data.caption_images, len(images))
    return retrieval_metrics(images, text_embeddings(adapter, texts), positives, recall_k)
