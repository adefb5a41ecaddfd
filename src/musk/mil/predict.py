"""Applying trained slide-level models to a cohort: predictions (averaged over fold models) and metrics.

:func:`evaluate_to_folder` and :func:`predict_to_folder` are ``musk mil eval`` and ``musk mil predict``: they
check the output folder, apply the models and write ``predictions.csv``, ``provenance.json`` (and
``metrics.json``). The models run in the inference precision rule of :mod:`musk.runtime`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import check_file_target, write_json
from ..provenance import provenance
from ..runtime import resolve_device, seed_everything
from .inputs import TextEncoderSpec, load_inputs, text_weights_option
from .manifest import Cohort
from .metrics import classification_metrics, survival_metrics
from .results import prediction_rows, write_predictions_csv
from .saved import SavedMIL, load_mil_models

__all__ = [
    "MILApplyConfig",
    "MILPredictions",
    "check_output_folder",
    "evaluate_mil",
    "evaluate_to_folder",
    "predict_mil",
    "predict_to_folder",
]


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
    precision: str = "fp32",
) -> MILPredictions:
    """Predict every case of ``manifest`` with the model(s) in ``model_dir`` (a fold folder or a whole training
    run, whose fold models are averaged), their weights cast to ``precision``. Reports are embedded with the text
    encoder recorded in the model (``text_weights`` overrides where it is loaded from; ``none``: random) unless
    ``report_embeddings`` are given."""
    models = load_mil_models(model_dir, device, precision)
    config = models[0].config
    encoder = None
    if config.get("text_encoder"):
        spec = config["text_encoder"]
        weights = spec["weights"] if text_weights is None else text_weights_option(text_weights)
        encoder = TextEncoderSpec(spec["model"], weights, tokenizer, None, spec["max_tokens"], str(device))
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


@dataclass
class MILApplyConfig:
    """What ``musk mil eval`` / ``predict`` read and where they write. ``text_weights`` None: the report encoder
    recorded with the model; ``precision``: the inference precision of the models."""

    model_dir: str
    manifest: str
    output_dir: str
    features_dir: str | None = None
    reports: str | None = None
    report_embeddings: str | None = None
    tokenizer: str | None = None
    text_weights: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 8
    num_workers: int = 0
    seed: int = 0


def check_output_folder(output_dir: str | os.PathLike, model_dir: str | os.PathLike) -> None:
    """Refuse to write predictions into a training run or model folder (they would replace the run's own), or
    where nothing can be written; checked before any work."""
    out = Path(output_dir)
    holds = [n for n in ("results.json", "model.safetensors") if (out / n).is_file()] + [
        f"{p.parent.name}/" for p in sorted(out.glob("fold_*/model.safetensors"))[:1]
    ]
    if holds or (out.is_dir() and out.resolve() == Path(model_dir).resolve()):
        raise ValueError(
            f"--output_dir {out} holds trained models or a training run ({', '.join(holds) or 'the --model_dir'}); "
            f"its predictions.csv and provenance.json would be replaced: choose another folder, e.g. {out / 'eval'}"
        )
    check_file_target(out / "predictions.csv", "--output_dir")


def _write_outputs(config: MILApplyConfig, result: MILPredictions) -> None:
    output_dir = Path(config.output_dir)
    rows = prediction_rows(result.cohort, range(len(result.cohort)), result.predictions, None)
    if result.metrics is None:
        for row in rows:
            for target in ("label", "time", "event"):
                row.pop(target, None)
    write_predictions_csv(output_dir / "predictions.csv", rows)
    record = provenance(asdict(config))
    record["models"] = [str(m.path) for m in result.models]
    if result.metrics is not None:
        write_json(output_dir / "metrics.json", result.metrics)
        record["metrics"] = result.metrics
    write_json(output_dir / "provenance.json", record)


def _apply_to_folder(config: MILApplyConfig, apply: Callable[..., MILPredictions]) -> MILPredictions:
    check_output_folder(config.output_dir, config.model_dir)
    seed_everything(config.seed)
    result = apply(
        config.model_dir,
        config.manifest,
        config.features_dir,
        reports=config.reports,
        report_embeddings=config.report_embeddings,
        tokenizer=config.tokenizer,
        text_weights=config.text_weights,
        device=resolve_device(config.device),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        precision=config.precision,
    )
    _write_outputs(config, result)
    return result


def evaluate_to_folder(config: MILApplyConfig) -> MILPredictions:
    """``musk mil eval``: :func:`evaluate_mil`, written into ``config.output_dir`` as ``predictions.csv``,
    ``metrics.json`` and ``provenance.json``."""
    return _apply_to_folder(config, evaluate_mil)


def predict_to_folder(config: MILApplyConfig) -> MILPredictions:
    """``musk mil predict``: :func:`predict_mil` (no targets needed), written into ``config.output_dir`` as
    ``predictions.csv`` and ``provenance.json``."""
    return _apply_to_folder(config, predict_mil)
