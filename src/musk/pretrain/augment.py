"""Image augmentation for pretraining: mixed magnification crops, flips, colour jitter, stain jitter.

Every random choice comes from the ``numpy.random.Generator`` passed in, so a sample looks the same
whichever process or worker loads it, and again after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["PretrainAugment", "hed_jitter"]

#: Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB) in optical-density RGB, unit rows.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def hed_jitter(image: torch.Tensor, scale: np.ndarray, shift: np.ndarray) -> torch.Tensor:
    """Perturb the stain concentrations of a (3, H, W) image in [0, 1]: ``hed * scale + shift`` per stain."""
    od = -torch.log(image.clamp(min=1e-6)).permute(1, 2, 0)  # optical density, (H, W, 3)
    hed = od @ _HED_FROM_RGB
    hed = hed * torch.as_tensor(scale, dtype=hed.dtype) + torch.as_tensor(shift, dtype=hed.dtype)
    return torch.exp(-(hed @ _RGB_FROM_HED)).clamp(0, 1).permute(2, 0, 1)


@dataclass(frozen=True)
class PretrainAugment:
    """PIL image -> normalised (3, size, size) tensor.

    ``fields``: the crop side as fractions of the tile's shorter side, one picked at random per image (a tile
    read at 10x-equivalent field of view gives 20x and 40x views at 1/2 and 1/4); the crop is then resized to
    ``size``. ``train=False`` takes the whole centre square, without jitter.
    """

    size: int
    fields: tuple[float, ...] = (1.0, 0.5, 0.25)
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    stain: float = 0.03
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    train: bool = True

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        image = image.convert("RGB")
        w, h = image.size
        side = min(w, h)
        if self.train:
            side = max(1, round(side * float(rng.choice(self.fields))))
            left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        else:
            left, top = (w - side) // 2, (h - side) // 2
        x = torch.from_numpy(np.asarray(image.crop((left, top, left + side, top + side)), dtype=np.float32) / 255)
        x = x.permute(2, 0, 1)
        if side != self.size:
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bicubic", align_corners=False)[0]
            x = x.clamp(0, 1)
        if self.train:
            x = self._jitter(x, rng)
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        return (x - mean) / std

    def _jitter(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.flip and rng.random() < 0.5:
            x = x.flip(-1)
        if self.flip and rng.random() < 0.5:
            x = x.flip(-2)
        if self.stain:
            x = hed_jitter(x, rng.uniform(1 - self.stain, 1 + self.stain, 3), rng.uniform(-self.stain, self.stain, 3))
        if self.brightness:
            x = x * rng.uniform(1 - self.brightness, 1 + self.brightness)
        if self.contrast:
            grey = x.mean()
            x = (x - grey) * rng.uniform(1 - self.contrast, 1 + self.contrast) + grey
        if self.saturation:
            grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
            x = (x - grey) * rng.uniform(1 - self.saturation, 1 + self.saturation) + grey
        return x.clamp(0, 1)
