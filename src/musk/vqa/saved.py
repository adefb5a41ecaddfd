"""A fine-tuned VQA model on disk: weights, answer vocabulary, tokenizer, resolved config and provenance.

A directory written whole into a temporary sibling and renamed into place, so a killed job never leaves a
half-written model under the final name::

    model.safetensors   the MuskVQA state dict
    answers.json        the answer vocabulary (index i = classifier output i)
    tokenizer.spm       the question tokenizer (so the directory answers questions on its own)
    config.json         architecture, image preprocessing, question length, answers
    provenance.json     the training configuration, versions, weights hash, metrics
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

from ..files import atomic_dir, write_safetensors
from ..messages import listing
from ..models import MUSK, CheckpointMismatchError, MuskConfig
from ..runtime import inference_dtype
from ..tokenizer import MuskTokenizer, checked_tokenizer_path, get_tokenizer
from ..transforms import get_transform
from .answers import VOCAB_FILENAME, AnswerVocab
from .model import MuskVQA

__all__ = ["SavedVQA", "load_vqa_model", "save_vqa_model"]

logger = logging.getLogger(__name__)

WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
PROVENANCE_FILENAME = "provenance.json"
TOKENIZER_FILENAME = "tokenizer.spm"
FORMAT = "musk-vqa"
_PREPROCESSING_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


@dataclass
class SavedVQA:
    """A loaded VQA model with everything needed to answer: vocabulary, tokenizer, image transform; and the
    weights file it came from (for the provenance of its answers)."""

    model: MuskVQA
    vocab: AnswerVocab
    tokenizer: MuskTokenizer
    transform: Callable[[Image.Image], torch.Tensor]
    max_question_length: int
    config: dict
    weights_file: Path | None = None


def save_vqa_model(
    model: MuskVQA,
    vocab: AnswerVocab,
    directory: str | os.PathLike,
    *,
    tokenizer: MuskTokenizer,
    max_question_length: int,
    architecture: str | None = None,
    provenance: dict | None = None,
) -> Path:
    """Write ``model`` and what it needs to answer questions into ``directory`` (atomically); returns it."""
    if len(vocab) != model.num_answers:
        raise ValueError(f"the vocabulary has {len(vocab)} answers, the model {model.num_answers} outputs")
    cfg = model.backbone.pretrained_cfg
    config = {
        "format": FORMAT,
        "format_version": 1,
        "architecture": architecture or cfg.get("architecture"),
        "model_config": model.backbone.config.to_dict(),
        "pretrained_cfg": {k: cfg[k] for k in _PREPROCESSING_KEYS if k in cfg},
        "num_answers": model.num_answers,
        "max_question_length": max_question_length,
    }
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        write_safetensors(state, tmp / WEIGHTS_FILENAME, metadata={"format": FORMAT})
        vocab.save(tmp / VOCAB_FILENAME)
        shutil.copyfile(tokenizer.model_file, tmp / TOKENIZER_FILENAME)
        (tmp / CONFIG_FILENAME).write_text(json.dumps(config, indent=2, default=str) + "\n")
        if provenance is not None:
            (tmp / PROVENANCE_FILENAME).write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    logger.info("saved the VQA model (%d answers) to %s", len(vocab), directory)
    return directory


def _model_dir(directory: Path) -> Path:
    """``directory`` itself, or the ``best`` model inside a training output folder."""
    if not directory.is_dir():
        raise FileNotFoundError(f"VQA model directory not found: {directory}")
    if not (directory / WEIGHTS_FILENAME).exists() and (directory / "best" / WEIGHTS_FILENAME).exists():
        return directory / "best"
    return directory


def load_vqa_model(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    tokenizer: str | os.PathLike | None = None,
    precision: str = "fp32",
) -> SavedVQA:
    """Load a directory written by :func:`save_vqa_model` (or a training output folder: its ``best`` model).

    ``tokenizer`` overrides the directory's own ``tokenizer.spm``. ``precision``: the inference rule of
    :mod:`musk.runtime` (the weights, and the images given to them, cast to fp32, fp16 or bf16).
    """
    dtype = inference_dtype(precision)
    if tokenizer is not None:
        tokenizer = checked_tokenizer_path(tokenizer)
    directory = _model_dir(Path(directory).expanduser())
    needed = {
        WEIGHTS_FILENAME: "the weights",
        VOCAB_FILENAME: "the answer vocabulary",
        CONFIG_FILENAME: "the model configuration",
    }
    missing = [f"{name} ({what})" for name, what in needed.items() if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} is not a complete VQA model: it lacks {', '.join(missing)}; "
            f"point to a folder written by `musk vqa train` (or its best/ subfolder)"
        )
    config = json.loads((directory / CONFIG_FILENAME).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{directory / CONFIG_FILENAME} is not a musk VQA config (format {config.get('format')!r})")
    vocab = AnswerVocab.load(directory / VOCAB_FILENAME)
    if len(vocab) != config["num_answers"]:
        raise ValueError(
            f"{directory}: answers.json has {len(vocab)} answers, config.json says {config['num_answers']}"
        )
    if tokenizer is None:
        tokenizer = directory / TOKENIZER_FILENAME
        if not tokenizer.is_file():
            raise FileNotFoundError(f"{directory} has no {TOKENIZER_FILENAME}; pass the tokenizer file explicitly")

    with torch.device("meta"):
        backbone = MUSK(MuskConfig(**config["model_config"]))
        model = MuskVQA(backbone, config["num_answers"])
    backbone.pretrained_cfg = {**backbone.pretrained_cfg, **config["pretrained_cfg"]}
    if config.get("architecture"):
        backbone.pretrained_cfg["architecture"] = config["architecture"]
    state = load_file(str(directory / WEIGHTS_FILENAME))
    expected = set(model.state_dict())
    if set(state) != expected:
        lacking, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise CheckpointMismatchError(
            f"{directory / WEIGHTS_FILENAME} does not fit the saved config: "
            f"missing {listing(lacking, 8) or 'none'}, unexpected {listing(extra, 8) or 'none'}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval()
    return SavedVQA(
        model=model,
        vocab=vocab,
        tokenizer=get_tokenizer(tokenizer),
        transform=get_transform(backbone),
        max_question_length=int(config["max_question_length"]),
        config=config,
        weights_file=directory / WEIGHTS_FILENAME,
    )
