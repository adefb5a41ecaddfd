"""Applying trained slide-level models to a cohort: predictions (averaged over fold models) and metrics."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .inputs import TextEncoderSpec, load_inputs
from .manifest import Cohort
from .metrics import classification_metrics, survival_metrics
from .saved import SavedMIL, load_mil_models

__all__ = ["MILPredictions", "evaluate_mil", "predict_mil"]


@dataclass
class MILPredictions:
    """``predictions[i]`` belongs to ``cohort.cases[i]``: class probabilities (n, C) or risks (n,)."""

    cohort: Cohort
    predictions: np.ndarray
    models: list[SavedMIL]
    metrics: dict | None = None


def predict_mil(
    model_dir: str | os.PathLike,
    manifest: str | os.PathLike,
    features_dir: str | os.PathLike | None,
    reports: str | os.PathLike | None = None,
    report_embeddings: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    text_weights: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    num_workers: int = 0,
    targets: bool = False,
) -> MILPredictions:
    """Predict every case of ``manifest`` with the model(s) in ``model_dir`` (a fold folder or a whole training
    run, whose fold models are averaged). Reports are embedded with the text encoder recorded in the model
    (``text_weights`` overrides where it is loaded from) unless ``report_embeddings`` are given."""
    models = load_mil_models(model_dir, device)
    config = models[0].config
    encoder = None
    if config.get("text_encoder"):
        spec = config["text_encoder"]
        weights = text_weights if text_weights is not None else spec["weights"]
        encoder = TextEncoderSpec(
            spec["model"], None if weights == "none" else weights, tokenizer, None, spec["max_tokens"], str(device)
        )
    inputs = load_inputs(
        manifest,
        config["task"],
        features_dir,
        config["fusion"],
        reports,
        report_embeddings,
        encoder,
        config["classes"] or None,
        targets=targets,
    )
    if inputs.feature_dim is not None and inputs.feature_dim != config["feature_dim"]:
        raise ValueError(
            f"the features in {features_dir} are {inputs.feature_dim}-d but the model was trained on "
            f"{config['feature_dim']}-d features; extract them with the same encoder"
        )
    if inputs.text_dim is not None and inputs.text_dim != config["text_dim"]:
        source = report_embeddings or f"the reports embedded by {config['text_encoder']['model']}"
        raise ValueError(
            f"{source}: the report vectors are {inputs.text_dim}-d but the model was trained on "
            f"{config['text_dim']}-d ones; embed the reports with the text encoder used in training"
        )
    predictions = np.mean([m.predict(inputs.dataset, batch_size, num_workers) for m in models], axis=0)
    return MILPredictions(inputs.cohort, predictions, models)


def evaluate_mil(model_dir: str | os.PathLike, manifest: str | os.PathLike, features_dir, **kwargs) -> MILPredictions:
    """:func:`predict_mil` on a manifest with labels or outcomes, plus the metrics (for survival, Uno's c-index
    and the time-dependent AUC use the evaluated cohort's own censoring distribution)."""
    result = predict_mil(model_dir, manifest, features_dir, targets=True, **kwargs)
    cases = result.cohort.cases
    if result.cohort.task == "classification":
        result.metrics = classification_metrics([c.label for c in cases], result.predictions)
    else:
        result.metrics = survival_metrics([c.time for c in cases], [c.event for c in cases], result.predictions)
    return result
