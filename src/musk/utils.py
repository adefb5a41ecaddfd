"""Compatibility with the upstream ``musk.utils`` module (the README snippet and TRIDENT call these).

The implementations live in :mod:`musk.models.loading` and :mod:`musk.tokenizer`.
"""

from __future__ import annotations

import os

from torch import nn

from .models.loading import load_weights
from .tokenizer import tokenize_for_musk as xlm_tokenizer

__all__ = ["load_model_and_may_interpolate", "xlm_tokenizer"]


def load_model_and_may_interpolate(
    ckpt_path: str | os.PathLike, model: nn.Module, model_key: str = "model|module", model_prefix: str = ""
) -> None:
    """Load a hub id (``hf_hub:xiangjx/musk``) or local checkpoint into ``model``, strictly.

    Unwraps ``model_key`` entries, strips ``model_prefix``, and interpolates the vision position table.
    """
    load_weights(model, ckpt_path, model_key=model_key, prefix=model_prefix)
