"""The run-time choices every job shares: the device, the precision and the seed.

Precision means one thing per kind of work:

- **inference** (embedding, zero-shot, WSI features, the benchmark, search, serving, MIL and VQA evaluation):
  the weights and inputs are cast to the precision's dtype (:func:`inference_dtype`), outputs come back as fp32;
- **training** (MIL, VQA, pretraining): fp32 weights with autocast to the precision's dtype, and a gradient
  scaler for fp16 (``musk.training.precision``; accelerate's mixed precision where accelerate runs the loop).
"""

from __future__ import annotations

import random

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = tuple(DTYPES)


def inference_dtype(precision: str) -> torch.dtype:
    """The dtype the weights and inputs are cast to for inference in ``precision`` (fp32, fp16 or bf16)."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return DTYPES[precision]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The device ``name`` stands for (None or "auto": the first of cuda, mps, cpu); ``ValueError`` if it is
    unusable here."""
    if isinstance(name, torch.device):
        return _usable_device(str(name))
    if name not in (None, "auto"):
        return _usable_device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _usable_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no usable CUDA GPU; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    return device


def accelerate_mixed_precision(precision: str, cpu: bool) -> str:
    """accelerate's mode for a ``--precision`` choice: ``no``, ``fp16`` or ``bf16``; ``auto`` picks bf16 on a GPU
    that has it, fp16 on other GPUs, none on CPU."""
    if precision == "fp32":
        return "no"
    if precision != "auto":
        return precision
    if cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
