"""Training precision: fp32 weights, autocast to bf16 or fp16, and a gradient scaler for fp16.

The rule every training loop of the package follows (inference casts the weights instead: see
:mod:`musk.runtime`). fp16 has too few exponent bits for small gradients, so its loss is scaled up before
``backward`` and the gradients scaled back down before the optimiser step; steps whose gradients overflowed are
skipped. bf16 needs no scaling. The loops accelerate runs (VQA training, pretraining) follow the same rule
through accelerate's mixed precision.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..runtime import PRECISIONS, inference_dtype

__all__ = ["ACCELERATE_PRECISIONS", "TrainingPrecision"]

#: ``--precision`` of the loops accelerate runs (VQA training, pretraining): accelerate's mixed precision, the
#: same rule. ``auto`` (bf16 on a GPU that has it, fp16 on other GPUs, fp32 on CPU) is kept there for
#: compatibility with earlier versions (:func:`musk.runtime.accelerate_mixed_precision`).
ACCELERATE_PRECISIONS = ("auto", *PRECISIONS)


class TrainingPrecision:
    """Autocast and (for fp16) loss scaling for one training loop on ``device``."""

    def __init__(self, precision: str, device: torch.device | str):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.device = torch.device(device)
        self.dtype = inference_dtype(precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")

    def autocast(self):
        """The context the forward pass and the loss run in."""
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Iterable[torch.nn.Parameter] | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        """Unscale, clip the gradients of ``parameters`` to ``max_grad_norm`` (when given), step, update the scale."""
        if max_grad_norm:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(list(parameters), max_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scaler.load_state_dict(state)
