"""Self-attention shared by both modalities, with per-expert projections and an inner LayerNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .multiway import Multiway


class MultiwayAttention(nn.Module):
    """Multi-head attention over every token; q/k/v/out projections and the inner norm are per expert."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            setattr(self, name, Multiway(lambda: nn.Linear(dim, dim)))
        self.inner_attn_ln = Multiway(lambda: nn.LayerNorm(dim, eps=eps))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, split: int, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask`` is boolean (B, 1, 1, N), True where a key may be attended to."""
        b, n, d = x.shape
        q = self._heads(self.q_proj(x, split))
        k = self._heads(self.k_proj(x, split))
        v = self._heads(self.v_proj(x, split))
        # the default scale is head_dim ** -0.5, the factor MUSK applies to q after projection
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.out_proj(self.inner_attn_ln(out, split), split)
