"""Stand-in for ``musk.load`` until it lands on main (same signature and attributes the service uses)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import torch

from ..models import create_model
from ..runtime import DTYPES, resolve_device
from ..streams import run_in_streams
from ..tokenizer import get_tokenizer
from ..transforms import get_transform
from ..zeroshot import DEFAULT_TEMPLATES, class_embeddings


def load(model, weights="published", device=None, precision="fp32", tokenizer=None, cache_dir=None, seed=0):
    random = weights in (None, "none")
    if random:
        torch.manual_seed(seed)
    pretrained = None if random else (True if weights == "published" else weights)
    network = create_model(model, pretrained=pretrained, device=resolve_device(device or "auto"),
                           dtype=DTYPES[precision], cache_dir=cache_dir)  # fmt: skip
    return InterimModel(network, model, precision, tokenizer, cache_dir)


class InterimModel:
    def __init__(self, model, architecture, precision, tokenizer, cache_dir):
        self.model, self.architecture, self.precision = model, architecture, precision
        self.transform = get_transform(model)
        self.tokenizer = get_tokenizer(tokenizer, cache_dir=cache_dir)
        digest = hashlib.sha256()
        for key, value in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        self.weights_sha256 = digest.hexdigest()

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @property
    def embed_dim(self):
        return self.model.embed_dim

    @property
    def logit_scale(self):
        return float(self.model.logit_scale.detach().float().exp())

    @torch.inference_mode()
    def embed_images(self, images, *, with_head=True, normalize=True, ms_aug=False, batch_size=32, streams=None):
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack(images[start : start + batch_size]).to(self.device, self.dtype)
            vectors = run_in_streams(
                lambda part: self.model.encode_image(part, with_head=with_head, normalize=normalize, ms_aug=ms_aug),
                batch,
                streams,
            )
            out.append(vectors.float().cpu().numpy())
        return SimpleNamespace(vectors=np.concatenate(out), files=[f"<image {i}>" for i in range(len(images))])

    @torch.inference_mode()
    def embed_texts(self, texts, *, with_head=True, normalize=True, batch_size=64):
        out = []
        for start in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer(list(texts[start : start + batch_size]))
            vectors = self.model.encode_text(ids.to(self.device), mask.to(self.device), with_head=with_head,
                                             normalize=normalize)  # fmt: skip
            out.append(vectors.float().cpu().numpy())
        return np.concatenate(out)

    def class_embeddings(self, class_names, templates=DEFAULT_TEMPLATES):
        return class_embeddings(self.model, self.tokenizer, class_names, templates)
