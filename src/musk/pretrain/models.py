"""MUSK wrapped with its pretraining heads: masked image and language modelling (stage 1), and contrastive
alignment with a small caption decoder for masked language modelling (stage 2).

The MUSK model sits under ``musk``; everything else is dropped by the export, so the exported state dict
has exactly the published keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import MUSK
from .objectives import ObjectiveOutput, StepContext, clip_loss, masked_token_loss

__all__ = ["MUSK_PREFIX", "CaptionDecoder", "ContrastiveModel", "MaskedModellingModel", "musk_weights"]

#: Where the pretraining models hold their MUSK, in their state dicts.
MUSK_PREFIX = "musk."


def musk_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MUSK tensors of a pretraining model's state dict, under the published keys (heads dropped)."""
    return {k[len(MUSK_PREFIX) :]: v for k, v in state.items() if k.startswith(MUSK_PREFIX)}


def _init_linear(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MaskedModellingModel(nn.Module):
    """Stage 1: images with masked patches predict the visual tokenizer's codes (MIM); texts with masked
    words predict the words (MLM). Images and texts are separate batches (unpaired data)."""

    def __init__(self, musk: MUSK, codebook_size: int):
        super().__init__()
        d = musk.embed_dim
        self.musk = musk
        self.mim_head = nn.Linear(d, codebook_size)
        self.mlm_head = nn.Linear(d, musk.config.vocab_size)
        _init_linear(self.mim_head)
        _init_linear(self.mlm_head)
        # the projection heads and temperature belong to stage 2; DDP needs every trained parameter used
        for param in (musk.vision_head.weight, musk.language_head.weight, musk.logit_scale):
            param.requires_grad_(False)

    @staticmethod
    def target_counts(batch: dict) -> dict[str, int]:
        """Predicted tokens per objective in a micro-batch: masked patches and masked words."""
        return {"mim": int(batch["image_mask"].sum()), "mlm": int((batch["text_labels"] != -100).sum())}

    def forward(self, batch: dict, step: StepContext | None = None) -> ObjectiveOutput:
        """``batch``: ``images`` (B, 3, S, S), ``image_mask`` (B, patches) bool, ``codes`` (B, patches);
        ``text_ids``, ``text_padding_mask``, ``text_labels`` (B', L). Loss = MIM + MLM."""
        mask = batch["image_mask"]
        states = self.musk.beit3(images=batch["images"], masked_positions=mask)[:, 1:]
        mim_labels = batch["codes"].masked_fill(~mask, -100)
        mim = masked_token_loss(self.mim_head(states[mask]), mim_labels[mask], "mim", step)
        text = self.musk.beit3(text_ids=batch["text_ids"], text_padding_mask=batch["text_padding_mask"])
        selected = batch["text_labels"] != -100
        mlm = masked_token_loss(self.mlm_head(text[selected]), batch["text_labels"][selected], "mlm", step)
        total = mim["mim_loss"] + mlm["mlm_loss"]
        return ObjectiveOutput({**mim, **mlm, "loss": mim["loss"] + mlm["loss"], "total_loss": total})


class CrossAttentionBlock(nn.Module):
    """Pre-norm: text attends to image states, then a feed-forward network."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(image)
        text = text + self.attn(self.norm_q(text), kv, kv, need_weights=False)[0]
        return text + self.ffn(self.norm_ffn(text))


class CaptionDecoder(nn.Module):
    """A few cross-attention blocks: masked-caption states attend to image patch states."""

    def __init__(self, dim: int, num_heads: int, depth: int = 4):
        super().__init__()
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        _init_linear(self)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            text = block(text, image)
        return self.norm(text)


class ContrastiveModel(nn.Module):
    """Stage 2: CLIP loss on the projected, normalised CLS vectors (negatives from every process) plus
    ``mlm_weight`` x the MLM loss of the caption decoder on the masked captions."""

    def __init__(self, musk: MUSK, decoder_depth: int = 4, mlm_weight: float = 0.1):
        super().__init__()
        d = musk.embed_dim
        self.musk = musk
        self.decoder = CaptionDecoder(d, musk.config.num_heads, decoder_depth)
        self.mlm_head = nn.Linear(d, musk.config.vocab_size)
        _init_linear(self.mlm_head)
        self.mlm_weight = mlm_weight
        musk.beit3.vision_embed.mask_token.requires_grad_(False)  # no masked images in stage 2

    @staticmethod
    def target_counts(batch: dict) -> dict[str, int]:
        """Predicted tokens per objective in a micro-batch: the masked caption words."""
        return {"mlm": int((batch["text_labels"] != -100).sum())}

    def forward(
        self, batch: dict, step: StepContext | None = None, features_only: bool = False
    ) -> ObjectiveOutput | tuple[torch.Tensor, torch.Tensor]:
        """``batch``: ``images``; ``text_ids``, ``text_padding_mask`` (the captions); ``masked_ids``,
        ``text_labels`` (the same captions with masked words). ``features_only``: the normalised ``(image,
        text)`` contrastive features (what the training loop caches over an accumulated step)."""
        musk = self.musk
        image_states = musk.beit3(images=batch["images"])
        text_states = musk.beit3(text_ids=batch["text_ids"], text_padding_mask=batch["text_padding_mask"])
        image = F.normalize(musk.vision_head(image_states[:, 0]), dim=-1)
        text = F.normalize(musk.language_head(text_states[:, 0]), dim=-1)
        if features_only:
            return image, text
        out = clip_loss(image, text, musk.logit_scale, step)
        masked = musk.beit3(text_ids=batch["masked_ids"], text_padding_mask=batch["text_padding_mask"])
        decoded = self.decoder(masked, image_states[:, 1:])
        selected = batch["text_labels"] != -100
        mlm = masked_token_loss(self.mlm_head(decoded[selected]), batch["text_labels"][selected], "mlm", step)
        total = out["clip_loss"] + self.mlm_weight * mlm["mlm_loss"]
        loss = out["loss"] + self.mlm_weight * mlm["loss"]
        return ObjectiveOutput({**out, **mlm, "loss": loss, "total_loss": total})
