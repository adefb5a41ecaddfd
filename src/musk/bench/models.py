"""Model adapters: MUSK and its peers behind one small interface, so every task treats them alike.

A model is named as in the upstream ``models.txt``: ``name,pretrained``.

- ``musk_*`` (any registered MUSK architecture): ``pretrained`` is ``published`` (its published weights), a hub
  id (``hf_hub:xiangjx/musk``), a local file or directory, or ``none`` (random weights, for tests).
- ``open_clip:<model name or hf-hub:owner/repo>``: ``pretrained`` is an open_clip tag or checkpoint file
  (empty for ``hf-hub:`` names). QuiltNet, BiomedCLIP, PLIP-style CLIPs.
- ``hf_clip:<hub id or folder>``: a transformers ``CLIPModel`` (``pretrained`` unused).
- ``timm:<model name>``: an image-only timm encoder; ``pretrained`` is a checkpoint file, ``timm`` for timm's
  own weights, or ``none`` (random weights). Image tasks only.

The optional libraries (open_clip, transformers) are imported only when such a model is asked for.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..files import file_sha256
from ..loaded import parameters_sha256
from ..streams import run_in_streams

logger = logging.getLogger(__name__)

#: Feature kinds: "embedding" is the projected, unit-norm vector of the shared image-text space (zero-shot and
#: retrieval); "probe" is the representation the upstream linear probe trains on.
FEATURE_KINDS = ("embedding", "probe")
#: Classifier weights a timm checkpoint may carry that an encoder built with ``num_classes=0`` does not use.
HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_drop.")


class ModelAdapter:
    """Image (and text) encoding of one model; subclasses fill in the encoders."""

    has_text = True

    def __init__(self, name: str, pretrained: str, transform: Callable, device: torch.device, dtype: torch.dtype):
        self.name = name
        self.pretrained = pretrained
        self.transform = transform
        self.device = device
        self.dtype = dtype
        self._weights_id: str | None = None

    def encode_images(self, images: torch.Tensor, kind: str, ms_aug: bool = False) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) float features of ``kind`` (see :data:`FEATURE_KINDS`)."""
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, D) unit-norm text embeddings in the image embedding space."""
        raise NotImplementedError(f"{self.name} has no text encoder; it supports the image-only tasks")

    def weights_id(self) -> str:
        """SHA-256 of the weights file, or of the parameters when there is no single file."""
        if self._weights_id is None:
            self._weights_id = self._compute_weights_id()
        return self._weights_id

    def _compute_weights_id(self) -> str:
        return parameters_sha256(self.module)

    def identity(self) -> dict:
        """What the features depend on, for the feature cache key."""
        return {
            "adapter": type(self).__name__,
            "model": self.name,
            "weights_sha256": self.weights_id(),
            "transform": repr(self.transform),
            "precision": str(self.dtype),
        }


class MuskAdapter(ModelAdapter):
    """MUSK (a :class:`musk.LoadedModel`): embeddings from the projection heads; probe features are the normalised
    CLS token (``ms_aug`` concatenates the multi-scale CLS tokens), as the upstream linear probe uses. On CPU each
    batch runs as one concurrent call per thread (:mod:`musk.streams`)."""

    def __init__(self, name, pretrained, device, dtype, tokenizer=None, cache_dir=None):
        from ..loaded import load
        from ..models.weights import weights_option
        from ..runtime import DTYPES

        precision = {v: k for k, v in DTYPES.items()}[dtype]
        self.loaded = load(name, weights_option(pretrained), device, precision, tokenizer, cache_dir)
        self.module = self.loaded.model
        super().__init__(name, pretrained, self.loaded.transform, device, dtype)

    def _compute_weights_id(self) -> str:
        return self.loaded.weights_sha256

    @torch.inference_mode()
    def encode_images(self, images, kind, ms_aug=False):
        def encode(part: torch.Tensor) -> torch.Tensor:
            if kind == "embedding":
                return self.module.encode_image(part, with_head=True, normalize=True).float()
            return self.module.encode_image(part, with_head=False, normalize=True, ms_aug=ms_aug).float()

        return run_in_streams(encode, images.to(self.device, self.dtype))

    def tokenizer(self):
        return self.loaded.tokenizer

    def encode_texts(self, texts):
        return torch.from_numpy(self.loaded.embed_texts(list(texts)))


class OpenClipAdapter(ModelAdapter):
    """An open_clip model: ``encode_image``/``encode_text``, normalised; probe features are the normalised
    image embedding (the upstream linear probe's choice for CLIP models)."""

    def __init__(self, name, pretrained, device, dtype, cache_dir=None):
        import open_clip

        arch = name.split(":", 1)[1]
        if not arch.startswith(("hf-hub:", "local-dir:")):
            _check_name(name, arch, open_clip.list_models(), "open_clip.list_models()", "open_clip")
            if pretrained and not Path(pretrained).exists():
                tag = pretrained.lower().replace("-", "_")  # how open_clip normalises tags
                tags = open_clip.list_pretrained_tags_by_model(arch)
                listing = f"open_clip.list_pretrained_tags_by_model({arch!r})"
                _check_name(f"{name},{pretrained}", tag, tags, listing, "open_clip", "pretrained tag or file")
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained or None, device=device, cache_dir=cache_dir
        )
        self.module = model.to(dtype=dtype).eval()
        self._tokenize = open_clip.get_tokenizer(arch)
        super().__init__(name, pretrained, preprocess, device, dtype)
        self._file = Path(pretrained) if pretrained and Path(pretrained).is_file() else None

    def _compute_weights_id(self) -> str:
        return file_sha256(self._file) if self._file else parameters_sha256(self.module)

    @torch.inference_mode()
    def encode_images(self, images, kind, ms_aug=False):
        return F.normalize(self.module.encode_image(images.to(self.device, self.dtype)).float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts):
        ids = self._tokenize(list(texts)).to(self.device)
        return F.normalize(self.module.encode_text(ids).float(), dim=-1)


def _projected(output) -> torch.Tensor:
    """The projected embeddings of ``get_image_features``/``get_text_features``: transformers 4 returns the
    tensor, transformers 5 an output object whose ``pooler_output`` holds it."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFClipAdapter(ModelAdapter):
    """A transformers ``CLIPModel`` (PLIP and others published in that format)."""

    def __init__(self, name, pretrained, device, dtype, cache_dir=None):
        from transformers import CLIPModel, CLIPProcessor

        source = name.split(":", 1)[1]
        self.module = CLIPModel.from_pretrained(source, cache_dir=cache_dir).to(device=device, dtype=dtype).eval()
        self._processor = CLIPProcessor.from_pretrained(source, cache_dir=cache_dir)

        def transform(image):
            return self._processor(images=image, return_tensors="pt")["pixel_values"][0]

        super().__init__(name, pretrained, transform, device, dtype)

    def identity(self) -> dict:
        return {**super().identity(), "transform": repr(self._processor.image_processor.to_dict())}

    @torch.inference_mode()
    def encode_images(self, images, kind, ms_aug=False):
        output = self.module.get_image_features(pixel_values=images.to(self.device, self.dtype))
        return F.normalize(_projected(output).float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts):
        batch = self._processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(
            self.device
        )
        return F.normalize(_projected(self.module.get_text_features(**batch)).float(), dim=-1)


class TimmAdapter(ModelAdapter):
    """A timm image encoder (no text): pooled pre-logits features, normalised, for every image task."""

    has_text = False

    def __init__(self, name, pretrained, device, dtype, cache_dir=None):
        import timm

        arch = name.split(":", 1)[1]
        if ":" not in arch:  # hub names (hf-hub:owner/repo) are resolved by timm itself
            _check_name(name, arch, timm.list_models(), "timm.list_models()", "timm")
        from ..models.weights import weights_option

        use_timm_weights = pretrained == "timm"
        self._file = None if use_timm_weights or weights_option(pretrained) is None else Path(pretrained)
        module = timm.create_model(arch, pretrained=use_timm_weights, num_classes=0, cache_dir=cache_dir)
        if self._file is not None:
            from ..models.loading import read_state_dict

            state = read_state_dict(self._file)
            missing, unexpected = module.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"{self._file} lacks {len(missing)} weights of {arch}, e.g. {missing[:5]}")
            unexpected = [k for k in unexpected if not k.startswith(HEAD_PREFIXES)]
            if unexpected:
                raise ValueError(
                    f"{self._file} has {len(unexpected)} weights {arch} lacks, e.g. {unexpected[:5]}; "
                    "is it another architecture (e.g. with layer scale)?"
                )
        self.module = module.to(device=device, dtype=dtype).eval()
        config = timm.data.resolve_data_config({}, model=self.module)
        super().__init__(name, pretrained, timm.data.create_transform(**config), device, dtype)

    def _compute_weights_id(self) -> str:
        return file_sha256(self._file) if self._file else parameters_sha256(self.module)

    @torch.inference_mode()
    def encode_images(self, images, kind, ms_aug=False):
        return F.normalize(self.module(images.to(self.device, self.dtype)).float(), dim=-1)


def _check_name(entry: str, value: str, known: Sequence[str], listing: str, library: str, what: str = "model") -> None:
    """A ValueError for a model or weights name ``library`` does not know, with close names and how to list them."""
    if value in known:
        return
    close = difflib.get_close_matches(value, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"{entry}: {library} has no {what} {value!r}.{hint} List the available names with "
        f'python -c "import {library}; print({listing})"'
    )


def load_adapter(
    name: str,
    pretrained: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ModelAdapter:
    """The adapter for a ``models.txt`` entry (see the module docstring for the accepted names)."""
    device = torch.device(device)
    kind, _, rest = name.partition(":")
    if rest and kind == "open_clip":
        return OpenClipAdapter(name, pretrained, device, dtype, cache_dir)
    if rest and kind == "hf_clip":
        return HFClipAdapter(name, pretrained, device, dtype, cache_dir)
    if rest and kind == "timm":
        return TimmAdapter(name, pretrained, device, dtype, cache_dir)
    if name.startswith("musk"):
        return MuskAdapter(name, pretrained, device, dtype, tokenizer=tokenizer, cache_dir=cache_dir)
    raise ValueError(
        f"unknown model {name!r}: use a MUSK architecture (musk_large_patch16_384), open_clip:<name>, "
        "hf_clip:<hub id or folder> or timm:<name>"
    )


def parse_models(entries: Sequence[str]) -> list[tuple[str, str]]:
    """``name,pretrained`` strings and/or models.txt files (one such line each; blank lines and ``#`` comments
    skipped) -> ``[(name, pretrained), ...]``."""
    models = []
    for entry in entries:
        path = Path(entry)
        if "," not in entry and path.is_file():
            lines = [(f"{path}:{n}", line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1)]
            lines = [(where, line) for where, line in lines if line and not line.startswith("#")]
        else:
            lines = [(f"--pretrained_model {entry!r}", entry.strip())]
        for where, line in lines:
            name, sep, pretrained = line.partition(",")
            if not sep or not name.strip():
                raise ValueError(
                    f"{where}: expected 'model,pretrained' (e.g. musk_large_patch16_384,hf_hub:xiangjx/musk)"
                )
            models.append((name.strip(), pretrained.strip()))
    if not models:
        raise ValueError("no models given: pass --pretrained_model name,path or a models.txt file")
    return models
