"""The learning-rate schedule: a linear warm-up, then a cosine down to a floor.

The learning rate of an optimizer step is a function of the step alone, so a resumed run needs no scheduler
state: the step it resumes at says everything.
"""

from __future__ import annotations

import math

import torch

__all__ = ["set_lr", "warmup_cosine", "warmup_steps"]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """The factor of optimizer step ``step`` (from 0): a linear rise from ~0 to 1 over ``warmup_steps``, then a
    cosine from 1 down to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_steps(warmup: float, total_steps: int) -> int:
    """Warm-up steps from ``warmup``: a number of steps, or a fraction of the run when below 1."""
    return int(warmup * total_steps) if warmup < 1 else int(warmup)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Set every group's lr to its ``initial_lr`` times ``factor``; returns the largest lr."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return max(group["lr"] for group in optimizer.param_groups)
