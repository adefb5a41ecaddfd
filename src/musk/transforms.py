"""Evaluation preprocessing derived from a model's ``pretrained_cfg`` (timm keys).

The transform is built from the config, never hard-coded: for MUSK (384 px, bicubic, ``crop_pct`` 1.0,
mean = std = 0.5) it is exactly the upstream preprocessing ``Resize(384, bicubic, antialias=True)``,
``CenterCrop(384)``, ``ToTensor()``, ``Normalize(0.5, 0.5)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

__all__ = ["get_transform", "resolve_data_config"]

REQUIRED_KEYS = ("input_size", "interpolation", "crop_pct", "mean", "std")
CROP_MODES = ("center", "squash")


def resolve_data_config(model_or_cfg: Any) -> dict[str, Any]:
    """The preprocessing keys of a model (anything with ``.pretrained_cfg``) or of a cfg mapping, checked."""
    cfg = getattr(model_or_cfg, "pretrained_cfg", model_or_cfg)
    if not isinstance(cfg, Mapping):
        kind = type(model_or_cfg).__name__
        raise TypeError(f"expected a model with a .pretrained_cfg dict, or the dict itself; got {kind}")
    missing = [key for key in REQUIRED_KEYS if key not in cfg]
    if missing:
        raise KeyError(f"pretrained_cfg lacks {missing}; it needs {list(REQUIRED_KEYS)}")

    input_size = tuple(int(v) for v in cfg["input_size"])
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {cfg['input_size']!r}")
    channels = input_size[0]
    mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean {mean} and std {std} must have one value per channel ({channels})")
    crop_pct = float(cfg["crop_pct"])
    if not crop_pct > 0:
        raise ValueError(f"crop_pct must be positive, got {crop_pct}")
    crop_mode = cfg.get("crop_mode", "center")
    if crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode {crop_mode!r} is not supported; use one of {CROP_MODES}")
    return {
        "input_size": input_size,
        "interpolation": str(cfg["interpolation"]),
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "mean": mean,
        "std": std,
    }


def _interpolation(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name.lower())
    except ValueError:
        known = [mode.value for mode in InterpolationMode]
        raise ValueError(f"unknown interpolation {name!r}; expected one of {known}") from None


def get_transform(model_or_cfg: Any) -> Callable[[Image.Image], torch.Tensor]:
    """Evaluation transform of a model or ``pretrained_cfg``: RGB PIL image -> normalised (C, H, W) tensor.

    ``crop_mode="center"``: resize the shorter side to ``floor(S / crop_pct)`` (antialiased), centre crop
    ``S`` (square input sizes only). ``crop_mode="squash"``: resize both sides to ``floor(size / crop_pct)``
    ignoring the aspect ratio, then centre crop to the input size.
    """
    cfg = resolve_data_config(model_or_cfg)
    _, height, width = cfg["input_size"]
    interpolation = _interpolation(cfg["interpolation"])
    if cfg["crop_mode"] == "center":
        if height != width:
            raise ValueError(f"crop_mode 'center' needs a square input_size, got {cfg['input_size']}")
        resize = T.Resize(math.floor(height / cfg["crop_pct"]), interpolation=interpolation, antialias=True)
    else:
        scaled = (math.floor(height / cfg["crop_pct"]), math.floor(width / cfg["crop_pct"]))
        resize = T.Resize(scaled, interpolation=interpolation, antialias=True)
    return T.Compose(
        [
            resize,
            T.CenterCrop((height, width)),
            T.ToTensor(),
            T.Normalize(mean=cfg["mean"], std=cfg["std"]),
        ]
    )
