"""Where a stage's MUSK starts: random weights, published-layout weights (``published``, a hub id, a file or a
folder holding one), or the weights of an earlier stage's run; with the text tokenizer that goes with them and
the fingerprint of the weights that ``provenance.json`` records."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..loaded import LoadedModel, parameters_sha256
from ..models import MUSK, create_model
from ..models.registry import published_source
from ..models.weights import resolve
from ..tokenizer import MuskTokenizer, find_tokenizer
from .distributed import restore_scalars
from .export import find_checkpoint, is_training_output, musk_state_from_checkpoint

__all__ = ["StartingPoint", "starting_point"]


@dataclass
class StartingPoint:
    """A MUSK in train mode, its text tokenizer and its weights' fingerprint."""

    musk: MUSK
    tokenizer: MuskTokenizer
    weights: dict


def starting_point(
    weights: str | os.PathLike | None,
    model: str,
    tokenizer: str | os.PathLike | None = None,
    **kwargs,
) -> StartingPoint:
    """The MUSK ``model`` from ``weights``: None or ``none`` (random), a training run's output folder or one of
    its checkpoints (stage 1 -> stage 2), or what :func:`musk.load` takes. ``tokenizer``: the given file, else the
    one beside local weights, else the hub's; found before the weights are read. ``kwargs`` go to
    :func:`musk.create_model` (``drop_path_rate``)."""
    if weights is not None and is_training_output(weights):
        checkpoint = find_checkpoint(weights)
        text = find_tokenizer(tokenizer)
        musk = create_model(model, **kwargs)
        musk.load_state_dict(restore_scalars(musk_state_from_checkpoint(checkpoint), musk.state_dict()), strict=True)
        # checkpoints come in several layouts: the loaded parameters identify the weights in all of them
        return StartingPoint(musk.train(), text, {"path": str(checkpoint), "sha256": parameters_sha256(musk)})
    resolved = resolve(weights, published_source(model))
    text = find_tokenizer(tokenizer, resolved)
    musk = create_model(model, pretrained=resolved.path, **kwargs)
    return StartingPoint(musk.train(), text, LoadedModel(musk, resolved).fingerprint)
