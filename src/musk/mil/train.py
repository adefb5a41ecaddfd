"""Patient-level cross-validation of a slide-level model: one model per fold, out-of-fold predictions, metrics.

Output folder::

    results.json        per metric: {"folds": [...], "mean": m, "std": s}
    predictions.csv     one row per case, predicted by the fold model that did not see it
    km.png              survival: Kaplan-Meier curves of the high/low predicted-risk groups, log-rank p
    fold_<k>/           model.safetensors, config.json, history.json, metrics.json, predictions.json
    report_embeddings.npz   when reports are fused: the case vectors used
    provenance.json     resolved configuration, versions, fold summaries, log-rank p

A fold whose folder is complete and was trained with the same configuration on the same cohort (case and slide
ids, targets, report vectors: :meth:`MILTrainConfig.run_key`) is reused when the run is started again, so an
interrupted run resumes at the fold it was in; a changed cohort or configuration trains every fold again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path, write_json
from ..models import DEFAULT_MODEL
from ..provenance import provenance
from ..runtime import resolve_device
from .fit import BALANCING, FitOptions, fit_model, outputs_to_predictions, predict_outputs
from .inputs import MILInputs, TextEncoderSpec, load_inputs
from .km import median_split, plot_kaplan_meier
from .losses import SURVIVAL_LOSSES, event_time_bins
from .manifest import TASKS, Cohort
from .metrics import CLASSIFICATION_METRICS, SURVIVAL_METRICS, classification_metrics, summarize, survival_metrics
from .models import AGGREGATORS, FUSIONS, MILModel
from .reports import save_report_embeddings
from .saved import fold_index, load_mil_models, save_mil_model
from .splits import case_folds, validation_split

__all__ = ["MILTrainConfig", "MILTrainResult", "prediction_rows", "train_mil", "write_predictions_csv"]

logger = logging.getLogger(__name__)

#: The field types a config may declare: the Python type and how an error names it.
_TYPES = {
    "int": (int, "an integer"),
    "float": (float, "a number"),
    "str": (str, "a string"),
    "bool": (bool, "true or false"),
    "list[str]": (list, "a list of names"),
}
_RUNTIME_FIELDS = ("output_dir", "device", "num_workers", "progress", "cache_bags")


@dataclass
class MILTrainConfig:
    """Everything a cross-validated run depends on (saved in ``provenance.json`` and with each fold model).

    ``fusion``: ``none`` (slides only), ``concat`` / ``gated`` (slides and reports), ``text_only`` (reports only).
    Reports: a manifest ``report`` column or ``reports`` (folder of ``<case_id>.txt``), embedded with the MUSK
    text encoder ``text_model`` / ``text_weights``; or precomputed ``report_embeddings`` (.npz).
    ``survival_loss``: ``nll`` (discrete time over ``n_bins`` bins at event-time quantiles) or ``cox``.
    ``val_fraction`` of each fold's training cases is held out for early stopping.
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
    text_weights: str | None = "hf_hub:xiangjx/musk"
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

    def __post_init__(self) -> None:
        self._check_types()
        for name, allowed in (
            ("task", TASKS),
            ("model", AGGREGATORS),
            ("fusion", FUSIONS),
            ("survival_loss", SURVIVAL_LOSSES),
            ("balance", BALANCING),
            ("precision", ("fp32", "bf16", "fp16")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "n_bins", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def _check_types(self) -> None:
        """Values of the declared types (a YAML ``folds: "5"`` is a string); paths may be ``os.PathLike``."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.type.endswith("| None"):
                continue
            kind = f.type.removesuffix(" | None")
            if kind == "str" and isinstance(value, os.PathLike):
                value = os.fspath(value)
            elif kind == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif kind == "list[str]" and isinstance(value, (list, tuple)):
                value = [str(v) for v in value]
            expected, described = _TYPES[kind]
            if not isinstance(value, expected) or (kind == "int" and isinstance(value, bool)):
                raise ValueError(
                    f"{f.name} must be {described}, got {value!r} "
                    f"({type(value).__name__}); in a YAML config write e.g. 'folds: 5' (no quotes around numbers)"
                )
            setattr(self, f.name, value)

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


def prediction_rows(cohort: Cohort, indices, predictions: np.ndarray, fold: int | None) -> list[dict]:
    """One dict per case: ids, the true target and the prediction (class probabilities or risk)."""
    rows = []
    for i, pred in zip(indices, predictions, strict=True):
        case = cohort.cases[int(i)]
        row = {"case_id": case.case_id, "slide_ids": ";".join(case.slide_ids)}
        if fold is not None:
            row["fold"] = fold
        if cohort.task == "classification":
            row["label"] = cohort.classes[case.label] if case.label is not None else ""
            row["predicted"] = cohort.classes[int(np.argmax(pred))]
            row.update({f"prob_{name}": float(p) for name, p in zip(cohort.classes, pred, strict=True)})
        else:
            row.update({"time": case.time, "event": case.event, "risk": float(pred)})
        rows.append(row)
    return rows


def write_predictions_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    path = Path(path)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


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


def _remove_other_folds(output_dir: Path, folds: int) -> None:
    """Delete ``fold_<k>`` folders of an earlier run with more folds, so they are never taken for this run's."""
    for path in sorted(output_dir.glob("fold_*")):
        index = fold_index(path)
        if path.is_dir() and index is not None and index >= folds:
            logger.warning("removing %s: left by an earlier run with more folds", path)
            shutil.rmtree(path)


def train_mil(config: MILTrainConfig) -> MILTrainResult:
    """Cross-validate ``config`` on its manifest; writes the output folder described in this module."""
    if config.manifest is None:
        raise ValueError("no manifest given")
    output_dir = Path(config.output_dir)
    device = resolve_device(config.device)
    encoder = TextEncoderSpec(config.text_model, config.text_weights, config.tokenizer, config.cache_dir, 100, device)
    inputs = load_inputs(
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
    cohort, dataset = inputs.cohort, inputs.dataset
    folds = case_folds(cohort, config.folds, config.seed)
    logger.info("%d cases, %d slides, task %s", len(cohort), sum(len(c.slide_ids) for c in cohort.cases), cohort.task)
    if dataset.text is not None:
        save_report_embeddings(output_dir / "report_embeddings.npz", cohort.case_ids, dataset.text.numpy())
    options = FitOptions(
        epochs=config.epochs,
        patience=config.patience,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        balance=config.balance,
        survival_loss=config.survival_loss,
        num_workers=config.num_workers,
        precision=config.precision,
        progress=config.progress,
    )
    run_key = config.run_key(cohort, None if dataset.text is None else dataset.text.numpy())
    _remove_other_folds(output_dir, config.folds)
    names = CLASSIFICATION_METRICS if cohort.task == "classification" else SURVIVAL_METRICS
    per_fold, rows, histories = [], [], []
    for k, (train, test) in enumerate(folds):
        fold_dir = output_dir / f"fold_{k}"
        reused = _reuse_fold(fold_dir, run_key, cohort.subset(test).case_ids)
        if reused is not None:
            logger.info("fold %d: reusing the finished fold in %s", k, fold_dir)
            per_fold.append(reused["metrics"])
            rows.extend(reused["rows"])
            histories.append(reused["history"])
            continue
        fit, val = validation_split(cohort, train, config.val_fraction, config.seed + k)
        np.random.seed(config.seed + k)
        torch.manual_seed(config.seed + k)
        options.seed = config.seed + k
        bin_edges = None
        if cohort.task == "classification":
            out_dim = len(cohort.classes)
        elif config.survival_loss == "cox":
            out_dim = 1
        else:
            fit_cases = cohort.subset(fit).cases
            bin_edges = event_time_bins([c.time for c in fit_cases], [c.event for c in fit_cases], config.n_bins)
            out_dim = len(bin_edges) + 1
        model = MILModel(
            out_dim, inputs.feature_dim, inputs.text_dim, config.model, config.fusion, config.hidden, config.dropout
        )
        result = fit_model(model.to(device), dataset, fit, val, options, bin_edges)
        outputs = predict_outputs(result.model, dataset, test, config.batch_size, config.num_workers)
        predictions = outputs_to_predictions(outputs, cohort.task, config.survival_loss)
        metrics = _fold_metrics(cohort, test, train, predictions)
        fold_rows = prediction_rows(cohort, test, predictions, k)
        logger.info("fold %d: %s (best epoch %d)", k, {n: round(metrics[n], 4) for n in names}, result.best_epoch)
        extra = {
            "history.json": result.history,
            "metrics.json": metrics,
            "predictions.json": fold_rows,
            "split.json": {
                name: cohort.subset(idx).case_ids for name, idx in (("fit", fit), ("val", val), ("test", test))
            },
        }
        save_mil_model(result.model, fold_dir, _model_config(config, inputs, out_dim, bin_edges, k, run_key), extra)
        per_fold.append(metrics)
        rows.extend(fold_rows)
        histories.append(result.history)

    order = {c: i for i, c in enumerate(cohort.case_ids)}
    rows.sort(key=lambda r: order[r["case_id"]])
    logrank = None
    if cohort.task == "survival":
        high = median_split([r["risk"] for r in rows], [r["fold"] for r in rows])
        for row, h in zip(rows, high, strict=True):
            row["risk_group"] = "high" if h else "low"
        times, events = [r["time"] for r in rows], [r["event"] for r in rows]
        logrank = plot_kaplan_meier(
            output_dir / "km.png", times, events, high, title=f"{config.model}, {config.fusion}"
        )
    predictions_path = write_predictions_csv(output_dir / "predictions.csv", rows)
    results = summarize(per_fold, names)
    write_json(output_dir / "results.json", results)
    record = provenance({k: v for k, v in asdict(config).items() if k != "progress"})
    record.update({"n_cases": len(cohort), "classes": cohort.classes, "logrank_p": logrank, "results": results})
    write_json(output_dir / "provenance.json", record)
    return MILTrainResult(output_dir, results, per_fold, predictions_path, logrank, histories)
