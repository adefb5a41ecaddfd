"""Zero-shot classification: each class is the renormalised mean of its prompts' embeddings."""

from __future__ import annotations

import numpy as np

from ..data import BenchData
from ..features import FeatureStore, text_embeddings
from ..metrics import classification_metrics
from ..models import ModelAdapter


def fill(template: str, class_name: str) -> str:
    """A prompt: ``{c}`` (upstream) or ``{}`` replaced by the class name."""
    return template.replace("{c}", class_name).replace("{}", class_name)


def class_embeddings(adapter: ModelAdapter, classes: list[str], templates: list[str]) -> np.ndarray:
    """(C, D) unit vectors: the mean of each class's unit prompt embeddings, renormalised."""
    if not classes or not templates:
        raise ValueError("zero-shot classification needs class names and at least one template")
    prompts = [fill(t, c) for c in classes for t in templates]
    prompt_emb = text_embeddings(adapter, prompts).reshape(len(classes), len(templates), -1)
    mean = prompt_emb.mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def evaluate(adapter: ModelAdapter, data: BenchData, store: FeatureStore) -> dict:
    """Metrics of the cosine between image embeddings and class embeddings (see ``classification_metrics``)."""
    if data.labels is None or not data.classes:
        raise ValueError(f"{data.name} has no class labels; zero-shot classification needs a labelled dataset")
    images = store.image_features(adapter, data, "embedding")
    classes = class_embeddings(adapter, data.classes, data.templates)
    return classification_metrics(data.labels, images @ classes.T, len(data.classes))
