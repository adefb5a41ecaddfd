"""Visual question answering on MUSK's joint encoder: data, answer vocabulary, model, training, evaluation.

Training needs the ``[vqa]`` extra (accelerate; pandas and pyarrow for PathVQA's parquet files).
"""

from .answers import AnswerVocab, is_closed, normalize_answer, question_type
from .data import VQAExample, load_examples, load_split
from .evaluate import VQAReport, compute_metrics, evaluate_vqa, write_predictions_csv
from .model import MuskVQA
from .predict import Predictions, answer_question, predict
from .saved import SavedVQA, load_vqa_model, save_vqa_model
from .train import VQATrainConfig, VQATrainResult, train_vqa

__all__ = [
    "AnswerVocab",
    "MuskVQA",
    "Predictions",
    "SavedVQA",
    "VQAExample",
    "VQAReport",
    "VQATrainConfig",
    "VQATrainResult",
    "answer_question",
    "compute_metrics",
    "evaluate_vqa",
    "is_closed",
    "load_examples",
    "load_split",
    "load_vqa_model",
    "normalize_answer",
    "predict",
    "question_type",
    "save_vqa_model",
    "train_vqa",
    "write_predictions_csv",
]
