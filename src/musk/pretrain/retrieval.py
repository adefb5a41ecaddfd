"""Image <-> text retrieval on held-out pairs: the stage-2 model-selection metric (R@1/R@50/R@200 both ways)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .augment import PretrainAugment
from .data import read_pair

__all__ = ["SELECTION_METRICS", "RetrievalEvaluator", "retrieval_recall"]

KS = (1, 50, 200)
#: What model selection can maximise: one recall, or the mean of all six.
SELECTION_METRICS = ("mean_recall", *(f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in KS))


def retrieval_recall(image: torch.Tensor, text: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k of pair ``i``'s text among all texts for image ``i`` (``image_to_text``), and the reverse.

    A pair counts as found at k when fewer than k other candidates score strictly higher than it.
    """
    sims = image.float() @ text.float().T
    true = sims.diagonal()
    above_i2t = (sims > true[:, None]).sum(1)
    above_t2i = (sims.T > true[:, None]).sum(1)
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = (above_i2t < k).float().mean().item()
        out[f"text_to_image_R@{k}"] = (above_t2i < k).float().mean().item()
    return out


class RetrievalEvaluator:
    """Embeds the held-out pairs with the model's inference path (``encode_image`` / ``encode_text``) and
    scores retrieval (and ``mean_recall``, the mean of the recalls). Uses no global random state, so
    evaluating does not change a resumed run."""

    def __init__(self, source, tokenizer, img_size: int, max_len: int = 100, batch_size: int = 64):
        self.records = list(source.records(0, 0))
        self.tokenizer, self.max_len, self.batch_size = tokenizer, max_len, batch_size
        self.augment = PretrainAugment(img_size, train=False)

    @torch.no_grad()
    def __call__(self, musk) -> dict[str, float]:
        was_training = musk.training
        musk.eval()
        device = next(musk.parameters()).device
        images, texts = [], []
        rng = np.random.default_rng(0)
        for start in range(0, len(self.records), self.batch_size):
            pairs = [read_pair(r) for r in self.records[start : start + self.batch_size]]
            x = torch.stack([self.augment(im, rng) for im, _ in pairs]).to(device)
            ids, padding = self.tokenizer([c for _, c in pairs], max_length=self.max_len)
            images.append(musk.encode_image(x).float().cpu())
            texts.append(musk.encode_text(ids.to(device), padding.to(device)).float().cpu())
        musk.train(was_training)
        recalls = retrieval_recall(torch.cat(images), torch.cat(texts))
        return {**recalls, "mean_recall": float(np.mean(list(recalls.values())))}
