"""The visual tokenizer (VQ-KD, BEiT-v2 style): a ViT encoder, an l2-normalised codebook updated by
exponential moving averages with dead-code restarts, and a decoder that regresses a frozen teacher's
patch features. Stage 1 uses only ``encode``: each image patch -> a code index (the MIM targets)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ..files import atomic_path, write_safetensors
from .objectives import ObjectiveOutput, world

__all__ = ["EMACodebook", "VQKD", "VQKDArchitecture", "VQKDConfig", "load_visual_tokenizer", "save_visual_tokenizer"]

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "visual_tokenizer.safetensors"
CONFIG_FILE = "visual_tokenizer.json"


@dataclass
class VQKDArchitecture:
    """What a user chooses of a visual tokenizer (stage 0's settings include these): the encoder, the codebook
    and its moving averages, the decoder."""

    img_size: int = 224
    patch_size: int = 16
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    decoder_depth: int = 3
    codebook_size: int = 8192
    code_dim: int = 32
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_code_threshold: float = 1e-3


@dataclass
class VQKDConfig(VQKDArchitecture):
    """A visual tokenizer's whole configuration: its architecture and the width of the teacher's features it
    regresses (saved in ``visual_tokenizer.json``)."""

    teacher_dim: int = 1024


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(x)
    return x


class EMACodebook(nn.Module):
    """Nearest-code quantisation of l2-normalised vectors by cosine similarity.

    In training each code moves to the (normalised) moving average of the vectors assigned to it, with
    statistics summed over all processes; a code whose moving assignment count falls below ``threshold``
    restarts at a random vector of the batch (chosen on process 0 and broadcast).
    """

    def __init__(self, size: int, dim: int, decay: float = 0.99, threshold: float = 1e-3):
        super().__init__()
        self.decay, self.threshold = decay, threshold
        codes = F.normalize(torch.randn(size, dim), dim=-1)
        self.register_buffer("codes", codes)
        self.register_buffer("counts", torch.ones(size))
        self.register_buffer("sums", codes.clone())

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Code index of each row of ``z`` (N, dim), already normalised."""
        return (z.float() @ self.codes.T).argmax(-1)

    @torch.no_grad()
    def _update(self, z: torch.Tensor, index: torch.Tensor) -> int:
        onehot = F.one_hot(index, self.codes.shape[0]).float()
        counts = _all_reduce(onehot.sum(0))
        sums = _all_reduce(onehot.T @ z.float())
        self.counts.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        dead = self.counts < self.threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, z.shape[0], (n_dead,), device=z.device)
            self.sums[dead] = z[pick].float()
            self.counts[dead] = 1.0
        if world()[1] > 1:
            for buffer in (self.sums, self.counts):
                dist.broadcast(buffer, 0)
        self.codes.copy_(F.normalize(self.sums, dim=-1))
        return n_dead

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(quantised with straight-through gradients, indices, commitment loss)`` for (N, dim) ``z``."""
        index = self.lookup(z)
        q = self.codes[index].to(z.dtype)
        commitment = F.mse_loss(z, q.detach())
        if self.training:
            self._update(z.detach(), index)
        return z + (q - z).detach(), index, commitment


class VQKD(nn.Module):
    """Encoder -> codes -> decoder regressing teacher features; ``encode`` gives the code indices."""

    def __init__(self, config: VQKDConfig):
        super().__init__()
        c = self.config = config
        self.encoder = VisionTransformer(
            img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.encoder_dim, depth=c.encoder_depth,
            num_heads=c.encoder_heads, num_classes=0, global_pool="", dynamic_img_size=True,
        )  # fmt: skip
        d = c.encoder_dim
        self.to_code = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, c.code_dim))
        self.codebook = EMACodebook(c.codebook_size, c.code_dim, c.ema_decay, c.dead_code_threshold)
        self.from_code = nn.Linear(c.code_dim, d)
        grid = c.img_size // c.patch_size
        self.decoder_pos = nn.Parameter(torch.zeros(1, grid * grid, d))
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)
        self.decoder = nn.Sequential(*[Block(d, c.encoder_heads, qkv_bias=True) for _ in range(c.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, c.teacher_dim)

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_features(images)[:, self.encoder.num_prefix_tokens :]
        return F.normalize(self.to_code(tokens), dim=-1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, patches) code indices (any S divisible by the patch size)."""
        z = self._latents(images)
        return self.codebook.lookup(z.flatten(0, 1)).view(z.shape[:2])

    def forward(self, images: torch.Tensor, teacher: torch.Tensor) -> ObjectiveOutput:
        """Loss = 1 - cos(decoded, teacher features), averaged over patches, + commitment x ||z - sg(q)||^2."""
        z = self._latents(images)
        b, n, _ = z.shape
        q, index, commitment = self.codebook(z.flatten(0, 1))
        x = self.from_code(q.view(b, n, -1)) + self.decoder_pos
        decoded = self.head(self.decoder_norm(self.decoder(x)))
        cosine = 1 - F.cosine_similarity(decoded.float(), teacher.float(), dim=-1).mean()
        loss = cosine + self.config.commitment * commitment
        used = torch.zeros(self.config.codebook_size, device=z.device)
        used[index] = 1
        stats = _all_reduce(torch.stack([cosine.detach(), commitment.detach()])) / world()[1]
        return ObjectiveOutput(
            loss=loss,
            cosine_loss=stats[0].item(),
            commit_loss=stats[1].item(),
            total_loss=(stats[0] + self.config.commitment * stats[1]).item(),
            codes_used=int((_all_reduce(used) > 0).sum()),
        )


def save_visual_tokenizer(model: VQKD, directory: str | os.PathLike, provenance: dict | None = None) -> Path:
    """Write the tokenizer (weights + config) into ``directory`` (what stage 1's ``visual_tokenizer`` reads)."""
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_safetensors(state, directory / WEIGHTS_FILE)
    with atomic_path(directory / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps({"config": asdict(model.config), "provenance": provenance}, indent=2, default=str))
    return directory


def load_visual_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu") -> VQKD:
    """A frozen tokenizer in eval mode from a stage-0 output folder (or its ``visual_tokenizer.json``)."""
    path = Path(path)
    directory = path.parent if path.is_file() else path
    missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE) if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} holds no visual tokenizer (missing {', '.join(missing)}); "
            f"point visual_tokenizer to the output folder of `musk pretrain tokenizer`"
        )
    config = VQKDConfig(**json.loads((directory / CONFIG_FILE).read_text())["config"])
    model = VQKD(config)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
    return model.to(device).eval().requires_grad_(False)
