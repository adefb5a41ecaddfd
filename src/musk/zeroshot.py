"""Zero-shot classification: class embeddings from prompt ensembles, probabilities for images."""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F

from .models import MUSK
from .streams import run_in_streams
from .tables import write_csv, write_csv_rows

#: Generic pathology prompts; ``{}`` (or ``{c}``) is replaced by the class name.
DEFAULT_TEMPLATES = (
    "{}.",
    "an image of {}.",
    "histopathology image of {}.",
    "an H&E stained image of {}.",
)
#: Format fields that stand for the class name in a template.
PLACEHOLDERS = frozenset({"", "0", "c"})


@dataclass
class ZeroShotResult:
    """Row ``i`` of ``probabilities`` (N, C) belongs to ``files[i]``; columns follow ``classes``; ``failed`` maps
    the files that did not load to why."""

    probabilities: np.ndarray
    files: list[str]
    failed: dict[str, str] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)

    @property
    def predictions(self) -> list[str]:
        """The most probable class of each row."""
        return [self.classes[i] for i in self.probabilities.argmax(axis=1).tolist()] if len(self.files) else []


def fill_template(template: str, class_name: str) -> str:
    """A prompt for one class; templates use ``{}`` (or ``{0}``) or the upstream ``{c}`` placeholder.

    A template without a placeholder, or with any other field, raises ``ValueError``: it would give every
    class the same prompt.
    """
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as e:
        raise ValueError(f"template {template!r} is not a valid format string: {e}") from None
    if not fields or not fields <= PLACEHOLDERS:
        raise ValueError(f"template {template!r} must contain the class placeholder {{}} (or {{c}}) and no other field")
    return template.format(class_name, c=class_name)


def class_prompts(class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[str]:
    """Every template filled with every class name, class by class.

    Raises unless both are non-empty lists (not single strings), the names distinct and non-blank, and every
    template has the class placeholder.
    """
    for what, value in (("class_names", class_names), ("templates", templates)):
        if isinstance(value, str):
            raise TypeError(f"{what} must be a list, not one string ({value!r})")
        if not value:
            raise ValueError(f"zero-shot classification needs at least one of {what}")
    if any(not str(name).strip() for name in class_names):
        raise ValueError(f"class names must not be blank: {list(class_names)}")
    repeated = sorted({name for name in class_names if list(class_names).count(name) > 1})
    if repeated:
        raise ValueError(f"class names must be distinct; repeated: {repeated}")
    return [fill_template(t, name) for name in class_names for t in templates]


@torch.inference_mode()
def class_embeddings(
    model: MUSK,
    tokenizer,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """(C, D) unit vectors: the mean of each class's normalised prompt embeddings, renormalised."""
    prompts = class_prompts(class_names, templates)
    device = next(model.parameters()).device
    ids, mask = tokenizer(prompts)
    text = model.encode_text(ids.to(device), mask.to(device), with_head=True, normalize=True)
    text = text.float().reshape(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(text, dim=-1)


def probabilities(model: MUSK, image_embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(N, C) softmax over ``exp(logit_scale)`` times the cosine of projected image embeddings and classes.

    ``exp(logit_scale)`` is the temperature MUSK was trained with (about 100); the upstream demo multiplies
    by the raw ``logit_scale`` parameter instead, which flattens the probabilities but keeps the ranking.
    """
    scale = model.logit_scale.detach().exp().float().cpu()
    return (scale * image_embeddings.float().cpu() @ classes.float().cpu().T).softmax(dim=-1)


def zero_shot_classify(
    model: MUSK,
    tokenizer,
    images: torch.Tensor,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 32,
    streams: int | None = None,
) -> torch.Tensor:
    """(N, C) class probabilities for preprocessed images (see ``musk.get_transform``).

    Each batch runs as ``streams`` concurrent calls (default: one per CPU thread on CPU, see :mod:`musk.streams`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    classes = class_embeddings(model, tokenizer, class_names, templates)
    param = next(model.parameters())

    def encode(chunk: torch.Tensor) -> torch.Tensor:
        return model.encode_image(chunk, with_head=True, normalize=True)

    with torch.inference_mode():
        chunks = (chunk.to(param.device, param.dtype) for chunk in images.split(batch_size))
        feats = [run_in_streams(encode, chunk, streams) for chunk in chunks]
    return probabilities(model, torch.cat(feats), classes)


def write_table(result: ZeroShotResult, target: str | os.PathLike | IO[str]) -> None:
    """The ``musk zeroshot`` table: ``file``, one probability column per class (4 decimals), ``prediction``;
    files that failed follow with empty probabilities and ``FAILED: reason``. ``target``: a path (written
    atomically) or an open text stream."""
    header = ["file", *result.classes, "prediction"]
    rows = [
        [name, *(f"{p:.4f}" for p in row), best]
        for name, row, best in zip(result.files, result.probabilities.tolist(), result.predictions, strict=True)
    ]
    rows += [[name, *([""] * len(result.classes)), "FAILED: " + error] for name, error in result.failed.items()]
    if isinstance(target, (str, os.PathLike)):
        write_csv(Path(target), header, rows)
    else:
        write_csv_rows(target, header, rows)
