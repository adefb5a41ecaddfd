"""Answering questions with a VQA model: batched predictions over examples, and one question about one image."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..images import load_image
from .data import VQACollator, VQADataset, VQAExample
from .saved import SavedVQA, load_vqa_model

__all__ = ["Predictions", "answer_question", "predict"]

logger = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Per example: the predicted class index and its probability (softmax over the answer vocabulary)."""

    indices: torch.Tensor
    probabilities: torch.Tensor


@torch.inference_mode()
def predict(
    saved: SavedVQA, examples: Sequence[VQAExample], batch_size: int = 32, num_workers: int = 0, progress: bool = False
) -> Predictions:
    """The model's answer to every example, in order (in the model's precision: see :func:`load_vqa_model`)."""
    model = saved.model.eval()
    weight = next(model.parameters())
    loader = DataLoader(
        VQADataset(examples, saved.transform, saved.vocab),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=VQACollator(saved.tokenizer, saved.max_question_length),
    )
    indices, probabilities = [], []
    for batch in tqdm(loader, desc="answering", disable=not progress):
        images = batch["images"].to(weight.device, weight.dtype)
        logits = model(images, batch["ids"].to(weight.device), batch["padding_mask"].to(weight.device))
        p, i = logits.float().softmax(-1).max(-1)
        indices.append(i.cpu())
        probabilities.append(p.cpu())
    return Predictions(torch.cat(indices), torch.cat(probabilities))


@torch.inference_mode()
def answer_question(
    model: SavedVQA | str | os.PathLike,
    image: str | os.PathLike,
    question: str,
    top_k: int = 5,
    device: str | torch.device = "cpu",
) -> list[tuple[str, float]]:
    """The ``top_k`` most likely answers to ``question`` about ``image`` with their probabilities
    (softmax over the whole answer vocabulary, so they sum to at most 1). ``model``: loaded or a directory."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty")
    saved = model if isinstance(model, SavedVQA) else load_vqa_model(model, device=device)
    net = saved.model.eval()
    weight = next(net.parameters())
    pixels = saved.transform(load_image(image)).unsqueeze(0).to(weight.device, weight.dtype)
    ids, padding_mask = saved.tokenizer([question], max_length=saved.max_question_length)
    probs = net(pixels, ids.to(weight.device), padding_mask.to(weight.device)).float().softmax(-1)[0]
    values, indices = probs.topk(min(top_k, len(saved.vocab)))
    return [(saved.vocab.answer(int(i)), float(v)) for v, i in zip(values, indices, strict=True)]
