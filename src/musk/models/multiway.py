"""The multiway wrapper: one expert for image tokens (A), one for text tokens (B)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Multiway(nn.Module):
    """Two copies of a module; the first ``split`` tokens go to ``A``, the rest to ``B``.

    The split travels with each call instead of living on the module, so one model can serve
    image, text and joint inputs from several threads at once.
    """

    def __init__(self, make: Callable[[], nn.Module]):
        super().__init__()
        self.A = make()
        self.B = make()

    def forward(self, x: torch.Tensor, split: int) -> torch.Tensor:
        if split >= x.shape[1]:
            return self.A(x)
        if split <= 0:
            return self.B(x)
        return torch.cat([self.A(x[:, :split]), self.B(x[:, split:])], dim=1)
