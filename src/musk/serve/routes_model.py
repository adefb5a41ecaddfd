"""``/v1/models``, ``/v1/embeddings`` (OpenAI's shape) and ``/v1/zeroshot``."""

from __future__ import annotations

import base64

import numpy as np
import torch
from fastapi import APIRouter, HTTPException

from ..zeroshot import DEFAULT_TEMPLATES, probabilities
from .engine import Engine
from .schemas import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    ImageInput,
    Usage,
    ZeroShotRequest,
    ZeroShotResponse,
    ZeroShotResult,
)
from .service import ReadyEngine

router = APIRouter(prefix="/v1", tags=["model"])


@router.get("/models", summary="The served model (OpenAI's list shape)")
async def models(engine: ReadyEngine) -> dict:
    name = engine.lm.architecture
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "musk"}]}


@router.post("/embeddings", summary="Embeddings of texts and images", response_model=EmbeddingResponse)
async def embeddings(request: EmbeddingRequest, engine: ReadyEngine) -> EmbeddingResponse:
    _check_embedding_request(request, engine)
    items = [request.input] if isinstance(request.input, str) else request.input
    texts = [(i, item) for i, item in enumerate(items) if isinstance(item, str)]
    images = [(i, item.image) for i, item in enumerate(items) if isinstance(item, ImageInput)]
    if texts and request.ms_aug:
        raise HTTPException(400, "ms_aug applies to images only; send texts in another request")
    with engine.admit(len(items)):
        vectors = await _vectors(engine, request, texts, images)
    tokens = sum(len(engine.lm.tokenizer.encode(t)) for _, t in texts)
    data = [Embedding(index=i, embedding=_encode(vectors[i], request.encoding_format)) for i in range(len(items))]
    return EmbeddingResponse(
        data=data, model=engine.lm.architecture, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
    )


async def _vectors(engine: Engine, request: EmbeddingRequest, texts: list, images: list) -> dict[int, np.ndarray]:
    """Row ``i`` of the answer for each (i, text) and (i, base64 image) input."""
    options = {"with_head": request.with_head, "normalize": request.normalize}
    vectors: dict[int, np.ndarray] = {}
    if images:
        tensors = await engine.images([image for _, image in images], "input")
        rows = await engine.embed_images(tensors, ms_aug=request.ms_aug, **options)
        vectors.update(zip((i for i, _ in images), rows, strict=True))
    if texts:
        rows = await engine.embed_texts([t for _, t in texts], **options)
        vectors.update(zip((i for i, _ in texts), rows, strict=True))
    return vectors


def _check_embedding_request(request: EmbeddingRequest, engine: Engine) -> None:
    if request.model != engine.lm.architecture:
        raise HTTPException(
            404, f"model {request.model!r} is not served here; this service serves {engine.lm.architecture!r}"
        )
    if request.dimensions is not None:
        raise HTTPException(400, "dimensions is not supported: MUSK's embeddings have a fixed width")
    count = 1 if isinstance(request.input, str) else len(request.input)
    if count == 0:
        raise HTTPException(400, "input is empty: give at least one text or image")
    if count > engine.settings.max_queue:
        raise HTTPException(
            400, f"input holds {count} items; this service takes at most {engine.settings.max_queue} per request"
        )


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector.astype(np.float32).tolist()


@router.post("/zeroshot", summary="Zero-shot class probabilities of images", response_model=ZeroShotResponse)
async def zeroshot(request: ZeroShotRequest, engine: ReadyEngine) -> ZeroShotResponse:
    if len(request.images) > engine.settings.max_queue:
        raise HTTPException(
            400, f"{len(request.images)} images; this service takes at most {engine.settings.max_queue} per request"
        )
    templates = request.templates or list(DEFAULT_TEMPLATES)
    with engine.admit(len(request.images)):
        classes = await engine.class_vectors(request.classes, templates)
        tensors = await engine.images(request.images, "images")
        vectors = await engine.embed_images(tensors, with_head=True, normalize=True, ms_aug=False)
    probs = probabilities(engine.lm.model, torch.from_numpy(vectors), classes).numpy()
    data = [
        ZeroShotResult(index=i, probabilities=row.tolist(), prediction=request.classes[int(row.argmax())])
        for i, row in enumerate(probs)
    ]
    return ZeroShotResponse(model=engine.lm.architecture, classes=request.classes, data=data)
