"""The MUSK model: multiway backbone plus the image and text projection heads."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import MuskConfig
from .encoder import MultiwayBackbone

DEFAULT_SCALES = (1, 2)


def default_pretrained_cfg(config: MuskConfig) -> dict:
    """Preprocessing contract of a MUSK model (timm ``pretrained_cfg`` keys)."""
    return {
        "input_size": (config.in_chans, config.img_size, config.img_size),
        "fixed_input_size": True,
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "num_classes": 0,
        "first_conv": "beit3.vision_embed.proj",
    }


def _finish(x: torch.Tensor, head: nn.Linear | None, normalize: bool) -> torch.Tensor:
    if head is not None:
        x = head(x[..., : head.in_features])
    return F.normalize(x, dim=-1) if normalize else x


class MUSK(nn.Module):
    """Vision-language multiway transformer (Xiang et al., Nature 2025).

    Parameter names follow the published checkpoint (``beit3.*``, ``vision_head``, ``language_head``,
    ``logit_scale``), so ``load_state_dict(strict=True)`` accepts ``xiangjx/musk`` as it is.
    """

    def __init__(self, config: MuskConfig | None = None, **overrides):
        super().__init__()
        config = MuskConfig(**{**(config.to_dict() if config else {}), **overrides})
        self.config = config
        self.embed_dim = self.num_features = config.embed_dim
        self.pretrained_cfg = default_pretrained_cfg(config)
        device = torch.empty(0).device  # honours an enclosing `with torch.device(...)`
        with torch.device("meta"):  # allocate once, initialise once (not PyTorch's defaults first)
            self.beit3 = MultiwayBackbone(config)
            self.vision_head = nn.Linear(config.embed_dim, config.embed_dim, bias=False)
            self.language_head = nn.Linear(config.embed_dim, config.embed_dim, bias=False)
            self.logit_scale = nn.Parameter(torch.empty(()))
        if device.type != "meta":
            self.to_empty(device=device)
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """BEiT-3 style initialisation: normal (std 0.02, cut at 2 std) weights, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                _trunc_normal(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        embed = self.beit3.vision_embed
        _trunc_normal(embed.cls_token)
        _trunc_normal(embed.mask_token)
        self.logit_scale.fill_(math.log(1 / 0.07))

    # ---- the upstream call -------------------------------------------------------------------
    def forward(
        self,
        image: torch.Tensor | None = None,
        text_description: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        return_global: bool = True,
        with_head: bool = True,
        out_norm: bool = True,
        ms_aug: bool = False,
        scales: Sequence[float] | None = None,
        max_split_size: int | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(vision_cls, language_cls)``, each None when its input is absent (upstream signature)."""
        vision = language = None
        if image is not None:
            if ms_aug:
                if not return_global:
                    raise ValueError("ms_aug gives one global vector per image; use return_global=True")
                x = self.multiscale_cls(image, scales or DEFAULT_SCALES, max_split_size)
            else:
                x = self.forward_features(image)
                x = x[:, 0] if return_global else x
            vision = _finish(x, self.vision_head if with_head else None, out_norm)
        if text_description is not None:
            x = self.forward_text_features(text_description, padding_mask)
            x = x[:, 0] if return_global else x
            language = _finish(x, self.language_head if with_head else None, out_norm)
        return vision, language

    # ---- embeddings ------------------------------------------------------------------------
    def encode_image(
        self,
        images: torch.Tensor,
        with_head: bool = True,
        normalize: bool = True,
        ms_aug: bool = False,
        scales: Sequence[float] = DEFAULT_SCALES,
    ) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D) CLS embeddings; (B, 2D) with ``ms_aug`` and no head."""
        return self(image=images, with_head=with_head, out_norm=normalize, ms_aug=ms_aug, scales=scales)[0]

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        """Stored image features (B, D), or multi-scale ones (B, 2D), -> the normalised projections that
        ``encode_image`` gives with its head (multi-scale features by their scale-1 half), without the image."""
        return _finish(features.to(self.vision_head.weight.dtype), self.vision_head, True)

    def encode_text(
        self,
        ids: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        with_head: bool = True,
        normalize: bool = True,
    ) -> torch.Tensor:
        """(B, L) token ids (padding_mask 1 = padding) -> (B, D) embeddings of the ``<s>`` token."""
        return self(text_description=ids, padding_mask=padding_mask, with_head=with_head, out_norm=normalize)[1]

    # ---- all tokens ------------------------------------------------------------------------
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """All image tokens after the final norm: (B, 1 + patches, D), CLS first."""
        return self.beit3(images=images)

    def forward_text_features(self, ids: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """All text tokens after the final norm: (B, L, D)."""
        return self.beit3(text_ids=ids, text_padding_mask=padding_mask)

    def forward_joint(
        self, images: torch.Tensor, ids: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Image tokens then text tokens in one sequence: (B, 1 + patches + L, D)."""
        return self.beit3(images=images, text_ids=ids, text_padding_mask=padding_mask)

    def multiscale_cls(
        self,
        images: torch.Tensor,
        scales: Sequence[float] = DEFAULT_SCALES,
        max_split_size: int | None = None,
    ) -> torch.Tensor:
        """CLS per scale, joined: each scale resizes (bicubic, float32), tiles, and averages tile CLS."""
        size = self.config.img_size
        tile = max_split_size or size
        b, c = images.shape[:2]
        parts = []
        for scale in scales:
            side = int(size * scale)
            if side % tile:
                raise ValueError(f"scale {scale} gives {side} px, not a multiple of the {tile} px tile")
            x = images
            if tuple(images.shape[-2:]) != (side, side):
                x = F.interpolate(images.float(), size=(side, side), mode="bicubic", align_corners=False)
                x = x.to(images.dtype)
            n = side // tile
            tiles = x.reshape(b, c, n, tile, n, tile).permute(2, 4, 0, 1, 3, 5).reshape(n * n * b, c, tile, tile)
            cls = self.forward_features(tiles)[:, 0]
            parts.append(cls.reshape(n * n, b, cls.shape[-1]).mean(0))
        return torch.cat(parts, dim=-1)

    # ---- training switches -----------------------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.beit3.encoder.grad_checkpointing = enable


def _trunc_normal(tensor: torch.Tensor, std: float = 0.02) -> None:
    nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)
