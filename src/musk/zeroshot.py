"""Zero-shot classification: class embeddings from prompt ensembles, probabilities for images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .models import MUSK
from .streams import run_in_streams

#: Generic pathology prompts; ``{}`` (or ``{c}``) is replaced by the class name.
DEFAULT_TEMPLATES = (
    "{}.",
    "an image of {}.",
    "histopathology image of {}.",
    "an H&E stained image of {}.",
)


def fill_template(template: str, class_name: str) -> str:
    """A prompt for one class; templates use ``{}`` or the upstream ``{c}`` placeholder."""
    return template.format(class_name, c=class_name)


@torch.inference_mode()
def class_embeddings(
    model: MUSK,
    tokenizer,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """(C, D) unit vectors: the mean of each class's normalised prompt embeddings, renormalised."""
    if not class_names:
        raise ValueError("zero-shot classification needs at least one class name")
    if not templates:
        raise ValueError("zero-shot classification needs at least one template")
    device = next(model.parameters()).device
    prompts = [fill_template(t, name) for name in class_names for t in templates]
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
    classes = class_embeddings(model, tokenizer, class_names, templates)
    param = next(model.parameters())

    def encode(chunk: torch.Tensor) -> torch.Tensor:
        return model.encode_image(chunk, with_head=True, normalize=True)

    with torch.inference_mode():
        chunks = (chunk.to(param.device, param.dtype) for chunk in images.split(batch_size))
        feats = [run_in_streams(encode, chunk, streams) for chunk in chunks]
    return probabilities(model, torch.cat(feats), classes)
