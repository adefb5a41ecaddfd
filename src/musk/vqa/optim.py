"""AdamW with layer-wise learning-rate decay, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch

from .model import MuskVQA

__all__ = ["build_optimizer", "cosine_with_warmup", "layer_id", "param_groups"]

_NO_DECAY = ("cls_token", "mask_token", "embed_positions")


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter for lr decay: 0 for the embeddings, ``i + 1`` for block ``i``, ``depth + 1`` above."""
    if name.startswith(
        ("backbone.beit3.text_embed", "backbone.beit3.vision_embed", "backbone.beit3.encoder.embed_pos")
    ):
        return 0
    prefix = "backbone.beit3.encoder.layers."
    if name.startswith(prefix):
        return int(name[len(prefix) :].split(".", 1)[0]) + 1
    return depth + 1


def param_groups(model: MuskVQA, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """Trainable parameters grouped by (layer, decay): lr ``lr * layer_decay ** (depth + 1 - layer)``, and no
    weight decay for biases, norms, the CLS/mask tokens and position tables."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    depth = model.depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, depth)
        decay = param.ndim > 1 and not any(key in name for key in _NO_DECAY)
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "names": [],
                "lr": lr * layer_decay ** (depth + 1 - layer),
                "weight_decay": weight_decay if decay else 0.0,
                "layer": layer,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(
    model: MuskVQA, lr: float, weight_decay: float = 0.05, layer_decay: float = 1.0, betas=(0.9, 0.999)
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; each group remembers its base lr as ``initial_lr``."""
    groups = param_groups(model, lr, weight_decay, layer_decay)
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8)


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up to 1 over ``warmup_steps``, then cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
