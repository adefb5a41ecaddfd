"""Token embeddings: image patches (with CLS and mask tokens) and the fairseq-style position tables."""

from __future__ import annotations

import torch
from torch import nn

from .config import MuskConfig

#: A segment of n tokens reads rows POSITION_OFFSET .. n + POSITION_OFFSET - 1 of its table (fairseq).
POSITION_OFFSET = 2


class VisionEmbedding(nn.Module):
    """Non-overlapping patch projection, row-major over the grid, with a CLS token in front."""

    def __init__(self, config: MuskConfig):
        super().__init__()
        self.img_size = config.img_size
        self.in_chans = config.in_chans
        d, p = config.embed_dim, config.patch_size
        self.proj = nn.Conv2d(config.in_chans, d, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))

    def forward(self, images: torch.Tensor, masked_positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, S, S) float images (cast to the model's dtype) -> (B, 1 + patches, D);
        ``masked_positions`` (B, patches) swaps in the mask token."""
        expected = (self.in_chans, self.img_size, self.img_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (batch, {', '.join(map(str, expected))}), got {tuple(images.shape)}; "
                f"resize with musk.get_transform(model) or use ms_aug for larger inputs"
            )
        if not images.is_floating_point():
            raise ValueError(f"expected float images normalised by musk.get_transform(model), got dtype {images.dtype}")
        x = self.proj(images.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)
        if masked_positions is not None:
            w = masked_positions.unsqueeze(-1).to(x.dtype)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)


class SegmentPositions(nn.Module):
    """Learned position tables: ``A`` for the image segment, ``B`` for the text segment."""

    def __init__(self, config: MuskConfig):
        super().__init__()
        self.A = nn.Embedding(config.num_patches + 1 + POSITION_OFFSET, config.embed_dim)
        self.B = nn.Embedding(config.max_text_positions, config.embed_dim)

    @staticmethod
    def rows(table: nn.Embedding, length: int) -> torch.Tensor:
        """Position vectors for a segment of ``length`` tokens, counting from the offset."""
        if length + POSITION_OFFSET > table.num_embeddings:
            raise ValueError(
                f"a segment of {length} tokens needs {length + POSITION_OFFSET} position rows, "
                f"the table has {table.num_embeddings}"
            )
        return table.weight[POSITION_OFFSET : POSITION_OFFSET + length]
