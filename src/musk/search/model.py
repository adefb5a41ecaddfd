"""Stand-in for ``musk.load`` (the lead's loaded-model object) until it lands on main: the same attributes and
methods the search uses, built from ``musk.create_model``, ``musk.get_tokenizer`` and ``musk.get_transform``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..embedding import Embeddings
from ..files import file_sha256
from ..images import load_image
from ..models import create_model
from ..models.loading import resolve_weights
from ..runtime import DTYPES, resolve_device, seed_everything
from ..tokenizer import get_tokenizer
from ..transforms import get_transform
from ..zeroshot import DEFAULT_TEMPLATES, class_embeddings

_NO_WEIGHTS = (None, "none", "random")


class StandInModel:
    """The parts of ``musk.LoadedModel`` the search needs."""

    def __init__(self, model, architecture: str, fingerprint: dict, tokenizer, cache_dir):
        self.model, self.architecture, self.fingerprint = model, architecture, fingerprint
        self.weights_sha256 = fingerprint["sha256"]
        self.transform = get_transform(model)
        self._tokenizer_source, self._cache_dir, self._tokenizer = tokenizer, cache_dir, None
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer(self._tokenizer_source, cache_dir=self._cache_dir)
        return self._tokenizer

    @torch.inference_mode()
    def project_image_features(self, features: np.ndarray) -> np.ndarray:
        head = self.model.vision_head
        x = torch.from_numpy(np.ascontiguousarray(features[:, : head.in_features], dtype=np.float32))
        x = head(x.to(self.device, self.dtype)).float()
        return torch.nn.functional.normalize(x, dim=-1).cpu().numpy()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        ids, mask = self.tokenizer(list(texts))
        out = self.model.encode_text(ids.to(self.device), mask.to(self.device), with_head=True, normalize=True)
        return out.float().cpu().numpy()

    def class_embeddings(self, class_names: Sequence[str], templates=DEFAULT_TEMPLATES) -> torch.Tensor:
        return class_embeddings(self.model, self.tokenizer, list(class_names), list(templates))

    @torch.inference_mode()
    def embed_images(self, images: Sequence) -> Embeddings:
        tensors, files, failed = [], [], {}
        for i, image in enumerate(images):
            name = str(image) if isinstance(image, (str, Path)) else f"<image {i}>"
            try:
                if isinstance(image, (str, Path)):
                    image = load_image(image)
                elif isinstance(image, np.ndarray):
                    image = Image.fromarray(image).convert("RGB")
            except (OSError, ValueError) as e:
                failed[name] = str(e)
                continue
            tensors.append(self.transform(image))
            files.append(name)
        if not tensors:
            return Embeddings(np.zeros((0, self.model.embed_dim), np.float32), files, failed)
        batch = torch.stack(tensors).to(self.device, self.dtype)
        vectors = self.model.encode_image(batch, with_head=True, normalize=True).float().cpu().numpy()
        return Embeddings(vectors, files, failed)


def load_model(
    model: str = "musk_large_patch16_384",
    weights: str | None = "published",
    device: str | None = None,
    precision: str = "fp32",
    tokenizer: str | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
) -> StandInModel:
    random = weights in _NO_WEIGHTS or str(weights).lower() in ("none", "random")
    pretrained = None if random else ("hf_hub:xiangjx/musk" if weights == "published" else weights)
    seed_everything(seed)
    net = create_model(model, pretrained=pretrained, device=resolve_device(device or "auto"),
                       dtype=DTYPES[precision], cache_dir=cache_dir)  # fmt: skip
    if random:
        digest = hashlib.sha256()
        for name, tensor in sorted(net.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        fingerprint = {"sha256": digest.hexdigest(), "source": "random", "seed": seed}
    else:
        path = resolve_weights(pretrained, cache_dir)
        fingerprint = {"sha256": file_sha256(path), "source": str(weights), "path": str(path)}
    return StandInModel(net, model, fingerprint, tokenizer, cache_dir)
