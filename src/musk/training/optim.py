"""AdamW parameter groups with layer-wise learning-rate decay for a model that holds a MUSK.

The MUSK's embeddings are layer 0, its block ``i`` is layer ``i + 1``, and everything else (the final norms,
heads, decoders, classifiers) is layer ``depth + 1``; layer ``k`` trains at ``lr * layer_decay ** (depth + 1 -
k)``. Norms, biases, tokens, position tables and the temperature get no weight decay. A model without a MUSK
(the visual tokenizer) has one layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models import MUSK

__all__ = ["build_optimizer", "layer_index", "musk_prefix", "param_groups"]

_NO_DECAY = ("cls_token", "mask_token", "embed_positions", "logit_scale")
_EMBEDDINGS = ("beit3.text_embed", "beit3.vision_embed", "beit3.encoder.embed_positions")
_BLOCKS = "beit3.encoder.layers."


def musk_prefix(model: nn.Module) -> str | None:
    """The name prefix of the MUSK inside ``model`` (``""`` for a MUSK itself, ``"backbone."``, ...), None when
    it holds none."""
    for name, module in model.named_modules():
        if isinstance(module, MUSK):
            return f"{name}." if name else ""
    return None


def layer_index(name: str, depth: int, prefix: str = "") -> int:
    """The layer of parameter ``name`` of a model whose MUSK (``depth`` blocks) sits under ``prefix``."""
    if name.startswith(tuple(prefix + e for e in _EMBEDDINGS)):
        return 0
    if name.startswith(prefix + _BLOCKS):
        return int(name[len(prefix + _BLOCKS) :].split(".", 1)[0]) + 1
    return depth + 1


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Trainable parameters grouped by (layer, decay), in that order. Each group holds ``params``, their
    ``names``, its ``layer``, ``lr`` and ``initial_lr`` (``lr * layer_decay ** (depth + 1 - layer)``) and
    ``weight_decay`` (0 for 1-d tensors, tokens, positions and the temperature)."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    prefix = musk_prefix(model)
    depth = -1 if prefix is None else model.get_submodule(prefix.rstrip(".")).config.depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = 0 if prefix is None else layer_index(name, depth, prefix)
        decay = param.ndim > 1 and not any(key in name for key in _NO_DECAY)
        scaled = lr * layer_decay ** (depth + 1 - layer)
        group = groups.setdefault((layer, decay), {
            "params": [], "names": [], "layer": layer, "lr": scaled, "initial_lr": scaled,
            "weight_decay": weight_decay if decay else 0.0,
        })  # fmt: skip
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 1.0,
    betas: Sequence[float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, layer_decay), lr=lr, betas=tuple(betas), eps=1e-8)
