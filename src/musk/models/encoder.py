"""The multiway encoder and the BEiT-3 style backbone (embeddings + encoder) it sits in."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import MuskConfig
from .embeddings import SegmentPositions, VisionEmbedding
from .layer import MultiwayBlock
from .multiway import Multiway


class MultiwayEncoder(nn.Module):
    """Adds segment positions, runs the blocks, applies the final per-expert LayerNorm."""

    def __init__(self, config: MuskConfig):
        super().__init__()
        d, eps = config.embed_dim, config.layer_norm_eps
        self.embed_positions = SegmentPositions(config)
        step = config.drop_path_rate / max(config.depth - 1, 1)
        rates = [i * step for i in range(config.depth)]  # stochastic depth grows linearly with depth
        self.layers = nn.ModuleList(MultiwayBlock(d, config.num_heads, config.ffn_dim, eps, drop_path=r) for r in rates)
        self.layer_norm = Multiway(lambda: nn.LayerNorm(d, eps=eps))
        self.grad_checkpointing = False

    def forward(
        self,
        image_tokens: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
        text_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image tokens (expert A) then text tokens (expert B) in one sequence -> (B, N, D)."""
        segments, split, keep = [], 0, None
        if image_tokens is not None:
            split = image_tokens.shape[1]
            segments.append(image_tokens + SegmentPositions.rows(self.embed_positions.A, split))
        if text_tokens is not None:
            text = text_tokens + SegmentPositions.rows(self.embed_positions.B, text_tokens.shape[1])
            if text_padding_mask is not None:
                pad = text_padding_mask.bool()
                text = text.masked_fill(pad.unsqueeze(-1), 0.0)
                keep = ~pad
                if image_tokens is not None:
                    keep = torch.cat([keep.new_ones(keep.shape[0], split), keep], dim=1)
            segments.append(text)
        if not segments:
            raise ValueError("the encoder needs image tokens, text tokens or both")
        x = segments[0] if len(segments) == 1 else torch.cat(segments, dim=1)
        attn_mask = None if keep is None else keep[:, None, None, :]
        for layer in self.layers:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, split, attn_mask, use_reentrant=False)
            else:
                x = layer(x, split, attn_mask)
        return self.layer_norm(x, split)


class MultiwayBackbone(nn.Module):
    """Text and image embeddings feeding one multiway encoder (the ``beit3`` module of MUSK)."""

    def __init__(self, config: MuskConfig):
        super().__init__()
        self.text_embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.vision_embed = VisionEmbedding(config)
        self.encoder = MultiwayEncoder(config)

    def forward(
        self,
        images: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_padding_mask: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """All output tokens: image tokens first when both modalities are given."""
        image_tokens = None if images is None else self.vision_embed(images, masked_positions)
        text_tokens = None if text_ids is None else self.text_embed(text_ids)
        return self.encoder(image_tokens, text_tokens, text_padding_mask)
