"""The VQA model: MUSK's joint encoder, a pooler on the first joint token and a two-layer answer classifier."""

from __future__ import annotations

import torch
from torch import nn

from ..models import MUSK

__all__ = ["MuskVQA"]


class MuskVQA(nn.Module):
    """Image tokens (expert A) then question tokens (expert B) through the shared-attention encoder; the first
    token of the joint sequence (the image CLS, which attends to the whole question) is pooled and classified.

    Pooler: LayerNorm -> Linear -> tanh. Classifier: Linear(D, 2D) -> LayerNorm -> GELU -> Linear(2D, answers).
    MUSK's contrastive heads, ``logit_scale`` and the mask token are unused here and frozen (so every
    trainable parameter gets a gradient, as DistributedDataParallel requires).
    """

    def __init__(self, backbone: MUSK, num_answers: int):
        super().__init__()
        if num_answers < 1:
            raise ValueError(f"num_answers must be positive, got {num_answers}")
        self.backbone = backbone
        self.num_answers = num_answers
        d = backbone.embed_dim
        eps = backbone.config.layer_norm_eps
        self.pooler = nn.Sequential(nn.LayerNorm(d, eps=eps), nn.Linear(d, d), nn.Tanh())
        self.classifier = nn.Sequential(
            nn.Linear(d, 2 * d), nn.LayerNorm(2 * d, eps=eps), nn.GELU(), nn.Linear(2 * d, num_answers)
        )
        for unused in (backbone.vision_head, backbone.language_head):
            unused.requires_grad_(False)
        backbone.logit_scale.requires_grad_(False)
        backbone.beit3.vision_embed.mask_token.requires_grad_(False)  # only masked image modelling uses it
        self.to(next(backbone.parameters()).device)
        self.init_head()

    @torch.no_grad()
    def init_head(self) -> None:
        """Fresh head: normal(0, 0.02) linear weights, zero biases, unit norms (the backbone is left alone)."""
        for module in (*self.pooler, *self.classifier):
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def depth(self) -> int:
        return self.backbone.config.depth

    def joint_tokens(
        self, images: torch.Tensor, ids: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 1 + patches + L, D): the encoder output over image then question tokens (padding masked)."""
        return self.backbone.forward_joint(images, ids, padding_mask)

    def forward(
        self, images: torch.Tensor, ids: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Answer logits (B, num_answers)."""
        pooled = self.pooler(self.joint_tokens(images, ids, padding_mask)[:, 0])
        return self.classifier(pooled)
