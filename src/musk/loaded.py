"""``musk.load``: one object that holds a loaded MUSK model and everything that goes with it.

The model, its tokenizer (loaded when first needed), its preprocessing, the device and dtype, and the weights
fingerprint (what every output records about the weights that made it). Every command and every part of the
package that needs MUSK gets it from here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch

from .embed import Embeddings, embed_images
from .files import file_sha256
from .images import DEFAULT_MAX_PIXELS, ImageInput
from .models import DEFAULT_MODEL, MUSK, PUBLISHED, ResolvedWeights, create_model
from .models.factory import check_architecture
from .models.registry import published_source
from .models.weights import resolve
from .runtime import inference_dtype, resolve_device
from .tokenizer import MuskTokenizer, checked_tokenizer_path, find_tokenizer
from .transforms import get_transform
from .zeroshot import DEFAULT_TEMPLATES, ZeroShotResult, class_embeddings, probabilities

__all__ = ["LoadedModel", "load"]

logger = logging.getLogger(__name__)


def load(
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike | ResolvedWeights | None = PUBLISHED,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    tokenizer: str | os.PathLike | MuskTokenizer | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> LoadedModel:
    """A MUSK model ready to embed images and texts and to classify zero-shot.

    ``weights``: ``"published"`` (the architecture's published weights, from its pretrained_cfg), ``"none"`` or
    None (random initialisation seeded by ``seed``: tests and demos), ``"hf_hub:owner/name"``, a local
    ``.safetensors``/``.pth``/``.bin`` file or a folder holding one. ``device``: None or ``"auto"`` picks cuda,
    then mps, then cpu. ``precision``: fp32, fp16 or bf16; the weights and inputs are cast to it.
    ``tokenizer``: a ``tokenizer.spm`` (or a loaded tokenizer); by default the one beside local weights, else the
    hub's. ``weights`` may also be weights already resolved (:class:`musk.models.ResolvedWeights`).
    Everything that can be checked is checked before the weights are read.
    """
    dtype = inference_dtype(precision)
    target = resolve_device(device)
    if tokenizer is not None and not isinstance(tokenizer, MuskTokenizer):
        tokenizer = checked_tokenizer_path(tokenizer)
    check_architecture(model)
    if isinstance(weights, ResolvedWeights):
        resolved = weights
    else:
        resolved = resolve(weights, published_source(model), cache_dir)
    if resolved.random:
        torch.manual_seed(seed)
    network = create_model(model, pretrained=resolved.path, device=target, dtype=dtype)
    return LoadedModel(network, resolved, precision, tokenizer, cache_dir)


class LoadedModel:
    """A MUSK model with its tokenizer, preprocessing, device, dtype and weights fingerprint."""

    def __init__(
        self,
        model: MUSK,
        weights: ResolvedWeights,
        precision: str = "fp32",
        tokenizer: str | os.PathLike | MuskTokenizer | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        self.model = model
        self.weights = weights
        self.precision = precision
        self.cache_dir = cache_dir
        self._tokenizer = tokenizer
        self.transform = get_transform(model)

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.architecture!r}, weights={self.weights.source!r}, device={str(self.device)!r}, "
            f"precision={self.precision!r})"
        )

    @property
    def architecture(self) -> str:
        return self.model.pretrained_cfg.get("architecture", type(self.model).__name__)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale)``: the temperature MUSK was trained with (about 100)."""
        return float(self.model.logit_scale.detach().float().exp())

    @property
    def tokenizer(self) -> MuskTokenizer:
        """The tokenizer: the one given, else ``tokenizer.spm`` beside local weights, else the hub's (loaded once)."""
        if not isinstance(self._tokenizer, MuskTokenizer):
            self._tokenizer = find_tokenizer(self._tokenizer, self.weights, self.cache_dir)
        return self._tokenizer

    @cached_property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights file; of the parameters (names and fp32 values) for random weights."""
        if self.weights.path is not None:
            return file_sha256(self.weights.path)
        return parameters_sha256(self.model)

    @property
    def fingerprint(self) -> dict:
        """What outputs record about the weights: the file's ``path`` and ``sha256``, plus the hub ``repo_id``,
        ``revision`` and ``filename`` for hub files; random weights: ``random`` and the parameters' ``sha256``."""
        return {**self.weights.describe(), "sha256": self.weights_sha256}

    # ---- images and texts ---------------------------------------------------------------------------
    def embed_images(
        self,
        images: Sequence[ImageInput],
        *,
        with_head: bool = True,
        normalize: bool = True,
        ms_aug: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        streams: int | None = None,
        progress: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> Embeddings:
        """Embeddings of image files and in-memory images (PIL images, uint8 arrays, preprocessed float tensors
        (3, S, S)). By default projected and L2-normalised (the shared image-text space); ``with_head=False,
        normalize=False`` gives the raw CLS features (``musk embed``'s default). Files that cannot be read are
        listed in ``failed``."""
        if isinstance(images, (str, os.PathLike)):
            raise TypeError("images must be a list; wrap a single image in one")
        self._check_tensor_sizes(images)
        return embed_images(
            self.model,
            images,
            with_head=with_head,
            normalize=normalize,
            ms_aug=ms_aug,
            batch_size=batch_size,
            num_workers=num_workers,
            streams=streams,
            progress=progress,
            transform=self.transform,
            max_pixels=max_pixels,
        )

    @torch.inference_mode()
    def embed_texts(
        self, texts: Sequence[str], *, with_head: bool = True, normalize: bool = True, batch_size: int = 64
    ) -> np.ndarray:
        """(N, D) float32 embeddings of texts (each cut to 100 tokens); projected and L2-normalised by default."""
        texts = _checked_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        out = []
        for start in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer(texts[start : start + batch_size])
            vectors = self.model.encode_text(
                ids.to(self.device), mask.to(self.device), with_head=with_head, normalize=normalize
            )
            out.append(vectors.float().cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def project_image_features(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Stored ``cls`` (N, D) or ``ms`` (N, 2D) patch features -> (N, D) float32 vectors in the shared
        image-text space, L2-normalised: exactly what ``--features proj`` gives for the same patches."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] not in (self.embed_dim, 2 * self.embed_dim):
            raise ValueError(
                f"features must be (N, {self.embed_dim}) cls or (N, {2 * self.embed_dim}) ms features of "
                f"{self.architecture}, got shape {tuple(x.shape)}"
            )
        return self.model.project_image(x.to(self.device)).float().cpu().numpy()

    # ---- zero-shot classification ---------------------------------------------------------------------
    def class_embeddings(self, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES):
        """(C, D) unit vectors: each class's prompt ensemble, averaged and renormalised."""
        return class_embeddings(self.model, self.tokenizer, class_names, templates)

    def classify(
        self,
        images: Sequence[ImageInput],
        class_names: Sequence[str],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        **options,
    ) -> ZeroShotResult:
        """Zero-shot class probabilities of images (``options`` as for :meth:`embed_images`: batch size,
        workers, streams, progress, max_pixels)."""
        classes = self.class_embeddings(class_names, templates)
        embedded = self.embed_images(images, with_head=True, normalize=True, **options)
        probs = probabilities(self.model, torch.from_numpy(embedded.vectors), classes).numpy()
        return ZeroShotResult(probs, embedded.files, embedded.failed, list(class_names))

    def _check_tensor_sizes(self, images: Sequence) -> None:
        size = tuple(self.model.pretrained_cfg["input_size"])
        for i, item in enumerate(images):
            if isinstance(item, torch.Tensor) and tuple(item.shape) != size:
                raise ValueError(
                    f"images[{i}]: a preprocessed tensor must have the model's input size {size}, got "
                    f"{tuple(item.shape)}; pass the image itself to have it preprocessed"
                )


def _checked_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings; wrap a single text in one")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty or blank")
    return texts


def parameters_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names and fp32 values, in name order): the fingerprint of weights that
    come from no file."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
