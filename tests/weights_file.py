"""Writing a model's weights as a .safetensors file, the way users' checkpoints come."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_weights(weights: torch.nn.Module | dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """``weights`` (a module's state dict, or a state dict) to ``path``; safetensors wants contiguous tensors."""
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return Path(path)
