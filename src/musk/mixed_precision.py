"""The accelerate mixed-precision mode for a ``--precision`` choice (fp32, fp16, bf16 or auto)."""

from __future__ import annotations

import torch


def accelerate_mixed_precision(precision: str, cpu: bool) -> str:
    """``no``, ``fp16`` or ``bf16``; ``auto`` picks bf16 on a GPU that has it, fp16 on other GPUs, none on CPU."""
    if precision == "fp32":
        return "no"
    if precision != "auto":
        return precision
    if cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
