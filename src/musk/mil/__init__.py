"""Slide-level models on patch features: ABMIL, mean pooling and a transformer aggregator; classification and
survival heads; report-text fusion; patient-level cross-validation; attention heatmaps.

Each ``musk mil`` command is one call here: ``train`` :func:`train_mil` (settings from :func:`train_config`),
``eval`` :func:`evaluate_to_folder`, ``predict`` :func:`predict_to_folder`, ``heatmap`` :func:`draw_heatmaps`.

Needs the ``[mil]`` extra (scikit-learn, scikit-survival, h5py, matplotlib).
"""

from .features import check_feature_file, read_feature_file
from .fit import FitOptions, FitResult, fit_model, outputs_to_predictions, predict_outputs
from .heatmap import attention_map, draw_attention, draw_heatmaps, patch_attention, write_attention_file
from .inputs import MILInputs, TextEncoderSpec, load_inputs
from .km import logrank_p, median_split, plot_kaplan_meier
from .losses import cox_partial_nll, discrete_time_nll, event_time_bins, hazards_to_risk, survival_curve
from .manifest import Case, Cohort, ManifestError, load_manifest, read_reports_dir
from .metrics import classification_metrics, summarize, survival_metrics
from .models import ABMIL, MeanPool, MILModel, TransformerMIL
from .predict import (
    MILApplyConfig,
    MILPredictions,
    evaluate_mil,
    evaluate_to_folder,
    predict_mil,
    predict_to_folder,
)
from .reports import chunk_ids, embed_reports, load_report_embeddings, save_report_embeddings
from .saved import SavedMIL, load_mil_models, save_mil_model
from .splits import case_folds, validation_split
from .train import MILTrainConfig, MILTrainResult, train_config, train_mil

__all__ = [
    "ABMIL",
    "Case",
    "Cohort",
    "FitOptions",
    "FitResult",
    "MILApplyConfig",
    "MILInputs",
    "MILModel",
    "MILPredictions",
    "MILTrainConfig",
    "MILTrainResult",
    "ManifestError",
    "MeanPool",
    "SavedMIL",
    "TextEncoderSpec",
    "TransformerMIL",
    "attention_map",
    "case_folds",
    "check_feature_file",
    "chunk_ids",
    "classification_metrics",
    "cox_partial_nll",
    "discrete_time_nll",
    "draw_attention",
    "draw_heatmaps",
    "embed_reports",
    "evaluate_mil",
    "evaluate_to_folder",
    "event_time_bins",
    "fit_model",
    "hazards_to_risk",
    "load_inputs",
    "load_manifest",
    "load_mil_models",
    "load_report_embeddings",
    "logrank_p",
    "median_split",
    "outputs_to_predictions",
    "patch_attention",
    "plot_kaplan_meier",
    "predict_mil",
    "predict_outputs",
    "predict_to_folder",
    "read_feature_file",
    "read_reports_dir",
    "save_mil_model",
    "save_report_embeddings",
    "summarize",
    "survival_curve",
    "survival_metrics",
    "train_config",
    "train_mil",
    "validation_split",
    "write_attention_file",
]
