"""AdamW parameter groups (layer-wise lr decay, no decay on norms/biases/tokens) and the lr schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["lr_factor", "param_groups"]

_NO_DECAY = ("cls_token", "mask_token", "embed_positions", "logit_scale")
_EMBEDDINGS = ("beit3.text_embed", "beit3.vision_embed", "beit3.encoder.embed_positions")


def _layer(name: str, depth: int) -> int:
    """0 for the embeddings, ``i + 1`` for block ``i``, ``depth + 1`` for everything above (heads, decoder)."""
    if name.startswith(tuple(f"musk.{e}" for e in _EMBEDDINGS)):
        return 0
    prefix = "musk.beit3.encoder.layers."
    if name.startswith(prefix):
        return int(name[len(prefix) :].split(".", 1)[0]) + 1
    return depth + 1


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Trainable parameters of a pretraining model (MUSK under ``musk``) grouped by (layer, decay): lr
    ``lr * layer_decay ** (depth + 1 - layer)``; no weight decay for 1-d tensors, tokens, positions, temperature."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    # parameters outside a MUSK (the visual tokenizer) all sit at the top: no decay across layers
    depth = model.musk.config.depth if hasattr(model, "musk") else -1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = _layer(name, depth) if depth >= 0 else 0
        decay = param.ndim > 1 and not any(key in name for key in _NO_DECAY)
        scale = layer_decay ** (depth + 1 - layer)
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "lr": lr * scale,
                "initial_lr": lr * scale,
                "weight_decay": weight_decay if decay else 0.0,
            },  # fmt: skip
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then a cosine from 1 down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Scale every group's ``initial_lr`` by ``factor``; returns the largest lr."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return max(group["lr"] for group in optimizer.param_groups)
