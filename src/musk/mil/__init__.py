"""Slide-level models on patch features: ABMIL, mean pooling and a transformer aggregator; classification and
survival heads; report-text fusion; patient-level cross-validation; attention heatmaps.

Needs the ``[mil]`` extra (scikit-learn, scikit-survival, h5py, matplotlib).
"""

from .fit import FitOptions, FitResult, fit_model, outputs_to_predictions, predict_outputs
from .heatmap import attention_map, draw_attention, patch_attention, write_attention_file
from .inputs import MILInputs, TextEncoderSpec, load_inputs
from .km import logrank_p, median_split, plot_kaplan_meier
from .losses import cox_partial_nll, discrete_time_nll, event_time_bins, hazards_to_risk, survival_curve
from .manifest import Case, Cohort, ManifestError, load_manifest, read_reports_dir
from .metrics import classification_metrics, summarize, survival_metrics
from .models import ABMIL, MeanPool, MILModel, TransformerMIL
from .predict import MILPredictions, evaluate_mil, predict_mil
from .reports import chunk_ids, embed_reports, load_report_embeddings, save_report_embeddings
from .saved import SavedMIL, load_mil_models, save_mil_model
from .splits import case_folds, validation_split
from .train import MILTrainConfig, MILTrainResult, train_mil

__all__ = [
    "ABMIL",
    "Case",
    "Cohort",
    "FitOptions",
    "FitResult",
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
    "chunk_ids",
    "classification_metrics",
    "cox_partial_nll",
    "discrete_time_nll",
    "draw_attention",
    "embed_reports",
    "evaluate_mil",
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
    "read_reports_dir",
    "save_mil_model",
    "save_report_embeddings",
    "summarize",
    "survival_curve",
    "survival_metrics",
    "train_mil",
    "validation_split",
    "write_attention_file",
]
