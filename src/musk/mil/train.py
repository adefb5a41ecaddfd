"""Patient-level cross-validation of a slide-level model: one model per fold, out-of-fold predictions, metrics.

Output folder::

    results.json        per metric: {"folds": [...], "mean": m, "std": s}; "learned" (:mod:`musk.mil.chance`);
                        with ``baseline``, the linear baseline's metrics in the same folds
    predictions.csv     one row per case, predicted by the fold model that did not see it
    km.png              survival: Kaplan-Meier curves of the high/low predicted-risk groups, log-rank p
    fold_<k>/           model.safetensors, config.json, history.json, metrics.json, predictions.json,
                        selection.json (which epoch was kept and its validation scores)
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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..files import write_json
from ..models import DEFAULT_MODEL, PUBLISHED
from ..provenance import provenance
from ..runtime import PRECISIONS, resolve_device
from ..settings import build, convert, load_yaml, pick
from .baseline import fit_linear, linear_model
from .chance import learning_report
from .data import feature_moments
from .fit import (
    BALANCING,
    OPTIMIZERS,
    SELECTIONS,
    FitOptions,
    FitResult,
    fit_model,
    outputs_to_predictions,
    predict_outputs,
)
from .inputs import MILInputs, TextEncoderSpec, load_inputs, text_weights_option
from .km import median_split, plot_kaplan_meier
from .losses import HAZARDS, SURVIVAL_LOSSES, bin_hazard_logits, event_time_bins
from .manifest import TASKS, Cohort
from .metrics import (
    CLASSIFICATION_METRICS,
    SURVIVAL_METRICS,
    classification_metrics,
    summarize,
    survival_metrics,
)
from .models import AGGREGATORS, FUSIONS, MILModel, RiskEnsemble
from .reports import save_report_embeddings
from .results import prediction_rows, write_predictions_csv
from .run_folder import RunFolder
from .saved import load_mil_models, save_mil_model
from .splits import case_folds, validation_split

__all__ = ["MILTrainConfig", "MILTrainResult", "train_config", "train_mil"]

logger = logging.getLogger(__name__)

#: Settings that do not change the models (a finished fold is reused when only they change); ``baseline`` only
#: adds the linear baseline's results beside them.
_RUNTIME_FIELDS = ("output_dir", "device", "num_workers", "progress", "cache_bags", "overwrite", "baseline")
#: How a model's outputs start: ``zero`` (every case alike: the head starts at zero), ``baseline`` (survival:
#: the fold's ridge Cox risk is added to the outputs, :class:`~musk.mil.models.BaselineRisk`) or ``both``
#: (survival: one model from each start, read as one, :class:`~musk.mil.models.RiskEnsemble`).
STARTS = ("both", "zero", "baseline")
#: Epochs of training when ``epochs`` is left at None, by start: a model that starts as the baseline learns what
#: it misses in fewer, and drifts away from it in more (docs/mil.md, "Reaching ridge Cox").
START_EPOCHS = {"zero": 40, "baseline": 20}
#: The defaults that depend on the task (a setting left at None takes its task's value). Survival models learn
#: a risk from a few dozen events: plain gradient steps on all of a fold's training cases for a fixed number of
#: epochs, where AdamW and early stopping on a handful of validation cases learn noise (docs/mil.md, "Survival:
#: what the defaults are and why").
TASK_DEFAULTS = {
    "classification": {"optimizer": "adamw", "lr": 1e-3, "val_fraction": 0.2, "start": "zero", "epochs": 40},
    "survival": {"optimizer": "sgd", "lr": 1e-2, "val_fraction": 0.0, "start": "both"},
}


@dataclass
class MILTrainConfig:
    """Everything a cross-validated run depends on (saved in ``provenance.json`` and with each fold model).

    ``fusion``: ``none`` (slides only), ``concat`` / ``gated`` (slides and reports), ``text_only`` (reports only).
    Reports: a manifest ``report`` column or ``reports`` (folder of ``<case_id>.txt``), embedded with the MUSK
    text encoder ``text_model`` / ``text_weights``; or precomputed ``report_embeddings`` (.npz).
    ``survival_loss``: ``nll`` (discrete time over ``n_bins`` bins at event-time quantiles) or ``cox``.
    ``val_fraction`` of each fold's training cases is held out for early stopping. ``start``: ``zero``,
    ``baseline`` or ``both`` (:data:`STARTS`). ``optimizer``, ``lr``, ``val_fraction`` and ``start`` left at
    None take their task's value (:data:`TASK_DEFAULTS`); ``epochs`` left at None, its start's
    (:data:`START_EPOCHS`). ``overwrite``: let the run
    replace its own outputs in an ``output_dir`` it would otherwise refuse (:mod:`musk.mil.run_folder`).
    Values are converted and checked by the one converter of :mod:`musk.settings`; build one from YAML and/or
    the command line with :func:`train_config`. ``model="linear"`` is the linear baseline
    (:mod:`musk.mil.baseline`; fitted on all of a fold's training cases); ``baseline`` reports it beside the
    model, in the same folds.
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
    hazards: str = "proportional"
    standardise: bool = True
    uncensored_weight: float = 0.0
    start: str | None = None
    select: str = "loss"
    folds: int = 5
    val_fraction: float | None = None
    epochs: int | None = None
    patience: int = 10
    batch_size: int = 4
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float = 1e-4
    hidden: int = 256
    dropout: float = 0.25
    balance: str = "weights"
    cache_bags: bool = True
    device: str = "auto"
    precision: str = "fp32"
    num_workers: int = 0
    seed: int = 0
    baseline: bool = False
    progress: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # paths may be os.PathLike; values of other types are converted or refused
            value = getattr(self, f.name)
            value = os.fspath(value) if isinstance(value, os.PathLike) else value
            setattr(self, f.name, convert(value, hints[f.name], f"MILTrainConfig: {f.name}"))
        self.text_weights = text_weights_option(self.text_weights)
        if self.task in TASK_DEFAULTS:
            for name, value in TASK_DEFAULTS[self.task].items():
                setattr(self, name, value if getattr(self, name) is None else getattr(self, name))
        for name, allowed in (
            ("task", TASKS),
            ("model", AGGREGATORS),
            ("fusion", FUSIONS),
            ("survival_loss", SURVIVAL_LOSSES),
            ("hazards", HAZARDS),
            ("balance", BALANCING),
            ("select", SELECTIONS),
            ("optimizer", OPTIMIZERS),
            ("precision", PRECISIONS),
            ("start", STARTS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "n_bins", "hidden"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.model == "linear" and self.fusion == "gated":
            raise ValueError("the linear model reads slides and reports side by side: use fusion 'concat', not 'gated'")
        if self.start != "zero" and self.task != "survival":
            raise ValueError(
                f"start {self.start!r} is for survival models (the baseline start adds the ridge Cox risk)"
            )

    def epochs_for(self, start: str) -> int:
        """How many epochs a model with this ``start`` (``zero`` or ``baseline``) trains."""
        return self.epochs if self.epochs is not None else START_EPOCHS[start]

    @property
    def standardises_features(self) -> bool:
        """Whether the slide-level model standardises its patch features (the linear model standardises its
        mean feature itself; a text-only model reads none)."""
        return self.standardise and self.model != "linear" and self.fusion != "text_only"

    @property
    def proportional_hazards(self) -> bool:
        """Whether the discrete-time hazards share one risk score (:data:`~musk.mil.losses.HAZARDS`)."""
        nll = self.task == "survival" and self.model != "linear" and self.survival_loss == "nll"
        return nll and self.hazards == "proportional"

    @property
    def survival_output(self) -> str | None:
        """What a survival model's outputs are: ``nll`` (hazard logits per bin) or ``cox`` (one log-risk, as the
        linear model's ridge Cox and a pair of models give); None for classification."""
        if self.task != "survival":
            return None
        return "cox" if self.model == "linear" or self.start == "both" else self.survival_loss

    def run_key(self, cohort: Cohort, text: np.ndarray | None = None) -> str:
        """Hash of the settings that change the models (not where or how fast they run) and of what they are
        trained on: the cohort's case and slide ids and targets, and the report vectors (not the manifest's path)."""
        settings = {k: v for k, v in asdict(self).items() if k not in (*_RUNTIME_FIELDS, "manifest")}
        start = "zero" if self.model == "linear" else self.start  # added later: earlier runs keep their keys
        if start != "both":
            settings["epochs"] = self.epochs_for(start)
        if start == "zero":
            del settings["start"]
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

    def summary(self) -> dict:
        """Mean and std per metric, whether the model learned and, when run, the baseline's means and stds."""
        out = {name: {"mean": m["mean"], "std": m["std"]} for name, m in self.results.items() if "mean" in m}
        out["learned"] = self.results["learned"]["learned"]
        if "baseline" in self.results:
            baseline = self.results["baseline"]
            out["baseline"] = {
                name: {"mean": m["mean"], "std": m["std"]} for name, m in baseline.items() if name != "model"
            }
        return out


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


def _members_config(model: MILModel | RiskEnsemble) -> dict | None:
    """A pair's members: their starts, output size and what their outputs are (None for one model)."""
    if not isinstance(model, RiskEnsemble):
        return None
    starts = ["baseline" if member.baseline is not None else "zero" for member in model.members]
    return {"starts": starts, "out_dim": model.members[0].out_dim, "survival_loss": model.member_loss}


def _model_config(
    config: MILTrainConfig, inputs: MILInputs, model: MILModel, bin_edges, fold: int, run_key: str
) -> dict:
    return {
        "task": config.task,
        "classes": inputs.cohort.classes,
        "out_dim": model.out_dim,
        "feature_dim": inputs.feature_dim,
        "text_dim": inputs.text_dim,
        "model": config.model,
        "fusion": config.fusion,
        "hidden": config.hidden,
        "dropout": config.dropout,
        "survival_loss": config.survival_output,
        "bin_edges": None if bin_edges is None else [float(x) for x in bin_edges],
        "proportional": config.proportional_hazards,
        "standardise": config.standardises_features,
        "from_baseline": isinstance(model, MILModel) and model.baseline is not None,
        "members": _members_config(model),
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
            "selection": json.loads((fold_dir / "selection.json").read_text()),
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


def _head(config: MILTrainConfig, cohort: Cohort, fit: np.ndarray) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """The head's output size and, for the discrete-time loss, the time bins' edges and the bins' starting hazard
    logits (both from the fit cases)."""
    if cohort.task == "classification":
        return len(cohort.classes), None, None
    if config.survival_loss == "cox":
        return 1, None, None
    times, events = zip(*((c.time, c.event) for c in cohort.subset(fit).cases), strict=True)
    bin_edges = event_time_bins(times, events, config.n_bins)
    return len(bin_edges) + 1, bin_edges, bin_hazard_logits(times, events, bin_edges)


def _fit_network(
    config: MILTrainConfig, inputs: MILInputs, fit, val, options: FitOptions, device, start: str
) -> tuple[FitResult, np.ndarray | None]:
    """A slide-level model with ``start`` (``zero`` or ``baseline``) trained on ``fit`` and selected on ``val``,
    and its survival bin edges (None unless discrete-time)."""
    out_dim, bin_edges, bias = _head(config, inputs.cohort, fit)
    model = MILModel(
        out_dim, inputs.feature_dim, inputs.text_dim, config.model, config.fusion, config.hidden, config.dropout,
        config.proportional_hazards, config.standardises_features, start == "baseline",
    )  # fmt: skip
    if bias is not None:
        model.set_output_bias(torch.as_tensor(bias))
    if start == "baseline":
        model.set_baseline(fit_linear(inputs.dataset, fit, options.seed))
    if config.standardises_features:
        model.set_feature_scale(*feature_moments(inputs.dataset, fit))
    options = replace(options, epochs=config.epochs_for(start))
    return fit_model(model.to(device), inputs.dataset, fit, val, options, bin_edges), bin_edges


def _fit_pair(config: MILTrainConfig, inputs: MILInputs, fit, val, options: FitOptions, device) -> FitResult:
    """A model from each start (each the one that start alone gives), read as one
    (:class:`~musk.mil.models.RiskEnsemble`, standardised on the ``fit`` cases' risks). Its history is the
    members' epochs, each marked with its start; its epoch and validation scores, the members' means."""
    results = {}
    for start in ("zero", "baseline"):
        np.random.seed(options.seed)
        torch.manual_seed(options.seed)
        results[start], _ = _fit_network(config, inputs, fit, val, options, device, start)
    pair = RiskEnsemble([r.model for r in results.values()], config.survival_loss)
    risks = [
        outputs_to_predictions(
            predict_outputs(r.model, inputs.dataset, fit, config.batch_size), "survival", pair.member_loss
        )
        for r in results.values()
    ]
    pair.set_risk_scales([r.mean() for r in risks], [r.std() if r.std() > 1e-8 else 1.0 for r in risks])
    history = [{"start": start, **entry} for start, r in results.items() for entry in r.history]

    def mean(name: str) -> float | None:
        values = [getattr(r, name) for r in results.values()]
        return None if None in values else float(np.mean(values))

    return FitResult(
        pair.to(device).eval(), mean("best_epoch"), mean("best_val_loss"), mean("best_val_metric"), history
    )


def _fit_fold(
    config: MILTrainConfig, inputs: MILInputs, fit, val, options: FitOptions, device
) -> tuple[FitResult, np.ndarray | None, dict]:
    """One fold's model, its survival bin edges (None unless discrete-time) and how it was selected
    (``selection.json``): the linear model fitted on ``fit``, or a slide-level model (a pair with ``start``
    ``both``) trained on ``fit`` and selected on ``val``."""
    if config.model == "linear":
        linear = fit_linear(inputs.dataset, fit, options.seed)
        model = linear_model(linear, inputs.feature_dim, inputs.text_dim, config.fusion)
        selection = {"select": "inner cross-validation", "penalty": linear.penalty, "val_metric": None}
        return FitResult(model.to(device), 0, None), None, selection
    if config.start == "both":
        result, bin_edges = _fit_pair(config, inputs, fit, val, options, device), _head(config, inputs.cohort, fit)[1]
    else:
        result, bin_edges = _fit_network(config, inputs, fit, val, options, device, config.start)
    selection = {
        "select": config.select,
        "epoch": result.best_epoch,
        "val_loss": result.best_val_loss,
        "val_metric": result.best_val_metric,
    }
    return result, bin_edges, selection


def _train_fold(
    config: MILTrainConfig, inputs: MILInputs, device: torch.device, k: int, train, test, run_key: str
) -> tuple[dict, MILModel, dict, dict]:
    """Fold ``k``: fit on part of ``train`` (early stopping on the rest), predict ``test``. Returns the fold's
    results (``metrics``, ``rows``, ``history``, ``selection``), its model, the model's config and the files saved
    beside it."""
    cohort, dataset = inputs.cohort, inputs.dataset
    val_fraction = 0.0 if config.model == "linear" else config.val_fraction  # it tunes itself inside `fit`
    fit, val = validation_split(cohort, train, val_fraction, config.seed + k)
    np.random.seed(config.seed + k)
    torch.manual_seed(config.seed + k)
    options = pick(
        FitOptions, config, seed=config.seed + k, epochs=config.epochs_for("zero")
    )  # per start: _fit_network
    result, bin_edges, selection = _fit_fold(config, inputs, fit, val, options, device)
    outputs = predict_outputs(result.model, dataset, test, config.batch_size, config.num_workers)
    predictions = outputs_to_predictions(outputs, cohort.task, config.survival_output)
    metrics = _fold_metrics(cohort, test, train, predictions)
    fold_rows = prediction_rows(cohort, test, predictions, k)
    names = CLASSIFICATION_METRICS if cohort.task == "classification" else SURVIVAL_METRICS
    logger.info("fold %d: %s (best epoch %d)", k, {n: round(metrics[n], 4) for n in names}, result.best_epoch)
    extra = {
        "history.json": result.history,
        "metrics.json": metrics,
        "selection.json": selection,
        "predictions.json": fold_rows,
        "split.json": {name: cohort.subset(idx).case_ids for name, idx in (("fit", fit), ("val", val), ("test", test))},
    }
    fold = {"metrics": metrics, "rows": fold_rows, "history": result.history, "selection": selection}
    model_config = _model_config(config, inputs, result.model, bin_edges, k, run_key)
    return fold, result.model, model_config, extra


def _baseline_results(config: MILTrainConfig, inputs: MILInputs, splits, device) -> dict:
    """The linear baseline's metrics in the run's folds (fitted on each fold's training cases, tested on its test
    cases): ``{"model": "linear", metric: {"folds", "mean", "std"}, ...}``."""
    cohort = inputs.cohort
    per_fold = []
    for k, (train, test) in enumerate(splits):
        linear = fit_linear(inputs.dataset, train, config.seed + k)
        model = linear_model(linear, inputs.feature_dim, inputs.text_dim, config.fusion).to(device)
        outputs = predict_outputs(model, inputs.dataset, test, config.batch_size, config.num_workers)
        per_fold.append(_fold_metrics(cohort, test, train, outputs_to_predictions(outputs, cohort.task, "cox")))
    names = CLASSIFICATION_METRICS if cohort.task == "classification" else SURVIVAL_METRICS
    results = summarize(per_fold, names)
    logger.info("linear baseline: %s", {n: round(m["mean"], 4) for n, m in results.items()})
    return {"model": "linear", **results}


def _pooled_results(
    config: MILTrainConfig, cohort: Cohort, folds: list[dict], folder: RunFolder, baseline: dict | None
) -> MILTrainResult:
    """The folds' predictions in manifest order (with risk groups and Kaplan-Meier curves for survival), their
    metrics summarised, whether the model learned, the ``baseline``'s results when run, and the provenance record,
    written into the run folder."""
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
    val_metrics = [fold["selection"]["val_metric"] for fold in folds]
    results["learned"] = learning_report(names[0], val_metrics, results[names[0]]["mean"])
    if baseline is not None:
        results["baseline"] = baseline
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
    baseline = (
        _baseline_results(config, inputs, splits, device) if config.baseline and config.model != "linear" else None
    )
    return _pooled_results(config, cohort, folds, folder, baseline)
