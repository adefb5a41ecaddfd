"""Patient-level cross-validation of a slide-level model: one model per fold, out-of-fold predictions, metrics.

Output folder::

    results.json        per metric: {"folds": [...], "mean": m, "std": s}
    predictions.csv     one row per case, predicted by the fold model that did not see it
    km.png              survival: Kaplan-Meier curves of the high/low predicted-risk groups, log-rank p
    fold_<k>/           model.safetensors, config.json, history.json, metrics.json, predictions.json
    report_embeddings.npz   when reports are fused: the case vectors used
    provenance.json     resolved configuration, versions, fold summaries, log-rank p
    .musk-mil-run.json  what runs of ours wrote here (:mod:`musk.mil.run_folder`)

Only entries a run of ours recorded are ever replaced or removed: a folder holding other outputs is refused
unless ``overwrite`` is set. A fold whose folder is complete and was trained with the same configuration on the
same cohort (case and slide ids, targets, report vectors: :meth:`MILTrainConfig.run_key`) is reused when the run
is started again, so an interrupted run resumes at the fold it was in; a changed cohort or configuration trains
every fold again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..files import write_json
from ..models import DEFAULT_MODEL, PUBLISHED
from ..provenance import provenance
from ..runtime import PRECISIONS, resolve_device
from ..settings import build, convert, load_yaml, pick
from .fit import BALANCING, FitOptions, fit_model, outputs_to_predictions, predict_outputs
from .inputs import MILInputs, TextEncoderSpec, load_inputs, text_weights_option
from .km import median_split, plot_kaplan_meier
from .losses import SURVIVAL_LOSSES, event_time_bins
from .manifest import TASKS, Cohort
from .metrics import CLASSIFICATION_METRICS, SURVIVAL_METRICS, classification_metrics, summarize, survival_metrics
from .models import AGGREGATORS, FUSIONS, MILModel
from .reports import save_report_embeddings
from .results import prediction_rows, write_predictions_csv
from .run_folder import RunFolder
from .saved import load_mil_models, save_mil_model
from .splits import case_folds, validation_split

__all__ = ["MILTrainConfig", "MILTrainResult", "train_config", "train_mil"]

logger = logging.getLogger(__name__)

_RUNTIME_FIELDS = ("output_dir", "device", "num_workers", "progress", "cache_bags", "overwrite")


@dataclass
class MILTrainConfig:
    """Everything a cross-validated run depends on (saved in ``provenance.json`` and with each fold model).

    ``fusion``: ``none`` (slides only), ``concat`` / ``gated`` (slides and reports), ``text_only`` (reports only).
    Reports: a manifest ``report`` column or ``reports`` (folder of ``<case_id>.txt``), embedded with the MUSK
    text encoder ``text_model`` / ``text_weights``; or precomputed ``report_embeddings`` (.npz).
    ``survival_loss``: ``nll`` (discrete time over ``n_bins`` bins at event-time quantiles) or ``cox``.
    ``val_fraction`` of each fold's training cases is held out for early stopping. ``overwrite``: let the run
    replace its own outputs in an ``output_dir`` it would otherwise refuse (:mod:`musk.mil.run_folder`).
    Values are converted and checked by the one converter of :mod:`musk.settings`; build one from YAML and/or
    the command line with :func:`train_config`.
    """

    manifest: str | None = None
    features_dir: str | None = None
    output_dir: str = "musk-mil"
    task: str = "classification"
    model: str = "abmil"
    fusion: str = "none"
    reports: str | None = None
    report_embeddings: str | None = None
    text_model: str = DEFAULT_MODEL
    text_weights: str | None = PUBLISHED
    tokenizer: str | None = None
    cache_dir: str | None = None
    classes: list[str] | None = None
    survival_loss: str = "nll"
    n_bins: int = 4
    folds: int = 5
    val_fraction: float = 0.2
    epochs: int = 40
    patience: int = 10
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int = 256
    dropout: float = 0.25
    balance: str = "weights"
    cache_bags: bool = True
    device: str = "auto"
    precision: str = "fp32"
    num_workers: int = 0
    seed: int = 0
    progress: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # paths may be os.PathLike; values of other types are converted or refused
            value = getattr(self, f.name)
            value = os.fspath(value) if isinstance(value, os.PathLike) else value
            setattr(self, f.name, convert(value, hints[f.name], f"MILTrainConfig: {f.name}"))
        self.text_weights = text_weights_option(self.text_weights)
        for name, allowed in (
            ("task", TASKS),
            ("model", AGGREGATORS),
            ("fusion", FUSIONS),
            ("survival_loss", SURVIVAL_LOSSES),
            ("balance", BALANCING),
            ("precision", PRECISIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "n_bins", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def run_key(self, cohort: Cohort, text: np.ndarray | None = None) -> str:
        """Hash of the settings that change the models (not where or how fast they run) and of what they are
        trained on: the cohort's case and slide ids and targets, and the report vectors (not the manifest's path)."""
        settings = {k: v for k, v in asdict(self).items() if k not in (*_RUNTIME_FIELDS, "manifest")}
        settings["cohort"] = [
            [c.case_id, c.slide_ids, None if c.label is None else cohort.classes[c.label], c.time, c.event]
            for c in cohort.cases
        ]
        if text is not None:
            settings["reports"] = hashlib.sha256(np.ascontiguousarray(text, dtype=np.float32).tobytes()).hexdigest()
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class MILTrainResult:
    output_dir: Path
    results: dict
    per_fold: list[dict]
    predictions: Path
    logrank_p: float | None = None
    history: list[list[dict]] = field(default_factory=list)


def train_config(config_file: str | os.PathLike | None = None, **values) -> MILTrainConfig:
    """The settings of a YAML file (keys = the field names, as ``musk mil train --config`` reads it) with
    ``values`` (e.g. the command line's) overriding them; an unknown key or a value of the wrong type is an error
    naming the key and the file (:func:`musk.settings.build`)."""
    settings = load_yaml(config_file) if config_file is not None else {}
    return build(MILTrainConfig, {**settings, **values}, str(config_file) if config_file is not None else "settings")


def _fold_metrics(cohort: Cohort, test, train, predictions: np.ndarray) -> dict:
    if cohort.task == "classification":
        return classification_metrics([cohort.cases[i].label for i in test], predictions)
    return survival_metrics(
        [cohort.cases[i].time for i in test],
        [cohort.cases[i].event for i in test],
        predictions,
        [cohort.cases[i].time for i in train],
        [cohort.cases[i].event for i in train],
    )


def _model_config(config: MILTrainConfig, inputs: MILInputs, out_dim: int, bin_edges, fold: int, run_key: str) -> dict:
    return {
        "task": config.task,
        "classes": inputs.cohort.classes,
        "out_dim": out_dim,
        "feature_dim": inputs.feature_dim,
        "text_dim": inputs.text_dim,
        "model": config.model,
        "fusion": config.fusion,
        "hidden": config.hidden,
        "dropout": config.dropout,
        "survival_loss": config.survival_loss if config.task == "survival" else None,
        "bin_edges": None if bin_edges is None else [float(x) for x in bin_edges],
        "text_encoder": None
        if config.fusion == "none"
        else {"model": config.text_model, "weights": config.text_weights, "max_tokens": 100},
        "fold": fold,
        "n_folds": config.folds,
        "run_key": run_key,
    }


def _reuse_fold(fold_dir: Path, run_key: str, test_ids: list[str]) -> dict | None:
    """The finished fold's results when it was trained by this run on these test cases, else None (retrain)."""
    try:
        saved = json.loads((fold_dir / "config.json").read_text())
        if saved.get("run_key") != run_key:
            return None
        split = json.loads((fold_dir / "split.json").read_text())
        reused = {
            "metrics": json.loads((fold_dir / "metrics.json").read_text()),
            "rows": json.loads((fold_dir / "predictions.json").read_text()),
            "history": json.loads((fold_dir / "history.json").read_text()),
        }
        if split.get("test") != test_ids or [r["case_id"] for r in reused["rows"]] != test_ids:
            logger.warning("%s: its test cases are not this fold's; training it again", fold_dir)
            return None
        load_mil_models(fold_dir)  # the weights load
        return reused
    except (OSError, ValueError, KeyError, TypeError) as e:
        if fold_dir.exists():
            logger.warning("%s cannot be reused (%s); training it again", fold_dir, e)
        return None


def _load_run_inputs(config: MILTrainConfig, device: torch.device) -> MILInputs:
    encoder = TextEncoderSpec(config.text_model, config.text_weights, config.tokenizer, config.cache_dir, 100, device)
    return load_inputs(
        config.manifest,
        config.task,
        config.features_dir,
        config.fusion,
        config.reports,
        config.report_embeddings,
        encoder,
        config.classes,
        config.cache_bags and config.num_workers == 0,  # loader workers would each keep their own copy
    )


def _head(config: MILTrainConfig, cohort: Cohort, fit: np.ndarray) -> tuple[int, np.ndarray | None]:
    """The head's output size and, for the discrete-time loss, the time bins' edges (from the fit cases)."""
    if cohort.task == "classification":
        return len(cohort.classes), None
    if config.survival_loss == "cox":
        return 1, None
    fit_cases = cohort.subset(fit).cases
    bin_edges = event_time_bins([c.time for c in fit_cases], [c.event for c in fit_cases], config.n_bins)
    return len(bin_edges) + 1, bin_edges


def _train_fold(
    config: MILTrainConfig, inputs: MILInputs, device: torch.device, k: int, train, test, run_key: str
) -> tuple[dict, MILModel, dict, dict]:
    """Fold ``k``: fit on part of ``train`` (early stopping on the rest), predict ``test``. Returns the fold's
    results (``metrics``, ``rows``, ``history``), its model, the model's config and the files saved beside it."""
    cohort, dataset = inputs.cohort, inputs.dataset
    fit, val = validation_split(cohort, train, config.val_fraction, config.seed + k)
    np.random.seed(config.seed + k)
    torch.manual_seed(config.seed + k)
    out_dim, bin_edges = _head(config, cohort, fit)
    model = MILModel(
        out_dim, inputs.feature_dim, inputs.text_dim, config.model, config.fusion, config.hidden, config.dropout
    )
    options = pick(FitOptions, config, seed=config.seed + k)
    result = fit_model(model.to(device), dataset, fit, val, options, bin_edges)
    outputs = predict_outputs(result.model, dataset, test, config.batch_size, config.num_workers)
    predictions = outputs_to_predictions(outputs, cohort.task, config.survival_loss)
    metrics = _fold_metrics(cohort, test, train, predictions)
    fold_rows = prediction_rows(cohort, test, predictions, k)
    names = CLASSIFICATION_METRICS if cohort.task == "classification" else SURVIVAL_METRICS
    logger.info("fold %d: %s (best epoch %d)", k, {n: round(metrics[n], 4) for n in names}, result.best_epoch)
    extra = {
        "history.json": result.history,
        "metrics.json": metrics,
        "predictions.json": fold_rows,
        "split.json": {name: cohort.subset(idx).case_ids for name, idx in (("fit", fit), ("val", val), ("test", test))},
    }
    fold = {"metrics": metrics, "rows": fold_rows, "history": result.history}
    return fold, result.model, _model_config(config, inputs, out_dim, bin_edges, k, run_key), extra


def _pooled_results(config: MILTrainConfig, cohort: Cohort, folds: list[dict], folder: RunFolder) -> MILTrainResult:
    """The folds' predictions in manifest order (with risk groups and Kaplan-Meier curves for survival), their
    metrics summarised, and the provenance record, written into the run folder."""
    rows = [row for fold in folds for row in fold["rows"]]
    order = {c: i for i, c in enumerate(cohort.case_ids)}
    rows.sort(key=lambda r: order[r["case_id"]])
    folder.will_write("km.png", "predictions.csv", "results.json", "provenance.json")
    logrank = None
    if cohort.task == "survival":
        high = median_split([r["risk"] for r in rows], [r["fold"] for r in rows])
        for row, h in zip(rows, high, strict=True):
            row["risk_group"] = "high" if h else "low"
        times, events = [r["time"] for r in rows], [r["event"] for r in rows]
        logrank = plot_kaplan_meier(
            folder.path / "km.png", times, events, high, title=f"{config.model}, {config.fusion}"
        )
    predictions_path = write_predictions_csv(folder.path / "predictions.csv", rows)
    names = CLASSIFICATION_METRICS if cohort.task == "classification" else SURVIVAL_METRICS
    per_fold = [fold["metrics"] for fold in folds]
    results = summarize(per_fold, names)
    write_json(folder.path / "results.json", results)
    record = provenance({k: v for k, v in asdict(config).items() if k != "progress"})
    record.update({"n_cases": len(cohort), "classes": cohort.classes, "logrank_p": logrank, "results": results})
    write_json(folder.path / "provenance.json", record)
    histories = [fold["history"] for fold in folds]
    return MILTrainResult(folder.path, results, per_fold, predictions_path, logrank, histories)


def train_mil(config: MILTrainConfig) -> MILTrainResult:
    """Cross-validate ``config`` on its manifest; writes the output folder described in this module."""
    if config.manifest is None:
        raise ValueError("no manifest given")
    folder = RunFolder(config.output_dir)
    folder.check(config.overwrite)
    device = resolve_device(config.device)
    inputs = _load_run_inputs(config, device)
    cohort, dataset = inputs.cohort, inputs.dataset
    splits = case_folds(cohort, config.folds, config.seed)
    logger.info("%d cases, %d slides, task %s", len(cohort), sum(len(c.slide_ids) for c in cohort.cases), cohort.task)
    text = None if dataset.text is None else dataset.text.numpy()
    if text is not None:
        folder.will_write("report_embeddings.npz")
        save_report_embeddings(folder.path / "report_embeddings.npz", cohort.case_ids, text)
    run_key = config.run_key(cohort, text)
    folder.remove_folds_from(config.folds)
    folds = []
    for k, (train, test) in enumerate(splits):
        fold_dir = folder.path / f"fold_{k}"
        fold = _reuse_fold(fold_dir, run_key, cohort.subset(test).case_ids)
        if fold is not None:
            logger.info("fold %d: reusing the finished fold in %s", k, fold_dir)
        else:
            fold, model, model_config, extra = _train_fold(config, inputs, device, k, train, test, run_key)
            folder.will_write(fold_dir.name)
            save_mil_model(model, fold_dir, model_config, extra)
        folds.append(fold)
    return _pooled_results(config, cohort, folds, folder)
