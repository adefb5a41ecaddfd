"""``create_model``: build a registered MUSK architecture and load its weights in one call."""

from __future__ import annotations

import os

import timm
import torch

from .loading import load_weights
from .musk import MUSK
from .registry import DEFAULT_MODEL, pretrained_source


def check_architecture(name: str) -> None:
    """``ValueError`` naming the registered MUSK architectures unless ``name`` is one of them."""
    architectures = timm.list_models("musk_*")
    if name.partition(".")[0] not in architectures:  # a pretrained tag may follow the dot
        raise ValueError(f"unknown MUSK architecture {name!r}; registered: {', '.join(architectures)}")


def create_model(
    name: str = DEFAULT_MODEL,
    pretrained: bool | str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    **kwargs,
) -> MUSK:
    """A MUSK model in eval mode.

    ``pretrained``: None or False for random weights; True for the architecture's published weights;
    ``"hf_hub:owner/name"``; or a local ``.safetensors``/``.pth``/``.bin`` file or a directory holding one.
    Loading is strict and never builds the random initialisation it would overwrite.
    Raises ``ValueError`` for a name that is not a registered MUSK architecture.
    """
    check_architecture(name)
    if pretrained is None or pretrained is False:
        model = timm.create_model(name, **kwargs)
    else:
        with torch.device("meta"):
            model = timm.create_model(name, **kwargs)
        source = pretrained_source(model.pretrained_cfg) if pretrained is True else pretrained
        load_weights(model, source, cache_dir=cache_dir)
    return model.to(device=device, dtype=dtype).eval()
