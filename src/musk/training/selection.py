"""Model selection and early stopping: keep the epoch with the best validation score, stop when it stops
improving."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["ModelSelection"]


@dataclass
class ModelSelection:
    """Tracks the best value of a validation metric (``mode`` ``max`` or ``min``).

    ``patience``: stop after that many evaluations without improvement (0: never). ``min_delta``: how much better
    counts as better. :meth:`update` says whether the new value is the best so far (the caller then keeps the
    weights); ``state_dict`` / ``load_state_dict`` carry it across a resume.
    """

    mode: str = "max"
    patience: int = 0
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int | None = None
    stale: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if self.patience < 0:
            raise ValueError(f"patience must not be negative, got {self.patience}")

    def update(self, epoch: int, value: float) -> bool:
        """Record ``value`` for ``epoch``; True when it is the best so far (a NaN never is)."""
        sign = 1.0 if self.mode == "max" else -1.0
        improved = not math.isnan(value) and (self.best is None or sign * (value - self.best) > self.min_delta)
        if improved:
            self.best, self.best_epoch, self.stale = float(value), epoch, 0
        else:
            self.stale += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and self.stale >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
