"""``/v1/search``: patches and slides of the index that match a text or an image, and per-slide heatmaps.

Patch queries are embedded through the batcher (so concurrent searches share model batches) and looked up in
the index in a worker thread; slide ranking and heatmaps run their library calls on the model's worker.
"""

from __future__ import annotations

from dataclasses import asdict

import anyio
import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request

from ..search import UnknownSlideError
from .engine import Engine
from .schemas import Heatmap, HeatmapRequest, SearchRequest, SearchResponse, SlideSearchRequest, SlidesResponse
from .service import ReadyEngine, service_of

router = APIRouter(prefix="/v1", tags=["search"])


def index_of(request: Request):
    index = service_of(request).index
    if index is None:
        raise HTTPException(404, "this service has no index (start it with --index)")
    return index


def _one_query(text: str | None, image: str | None) -> None:
    if (text is None) == (image is None):
        raise HTTPException(400, "give exactly one of text and image")
    if text is not None and not text.strip():
        raise HTTPException(400, "the text query is empty: give words to search for")


async def _query_vector(engine: Engine, text: str | None, image: str | None, templates: list[str] | None):
    """The query as the library embeds it: a text (through a prompt ensemble with templates) or an image."""
    if text is not None and templates:
        return (await engine.class_vectors([text.strip()], templates))[0].cpu().numpy()
    if text is not None:
        return (await engine.embed_texts([text.strip()], with_head=True, normalize=True))[0]
    tensors = await engine.images([image], "image")
    return (await engine.embed_images(tensors, with_head=True, normalize=True, ms_aug=False))[0]


@router.post("/search", summary="Patches most similar to a text or an image", response_model=SearchResponse)
async def search(body: SearchRequest, request: Request, engine: ReadyEngine) -> SearchResponse:
    index = index_of(request)
    _one_query(body.text, body.image)
    filters = body.filters.model_dump(exclude_none=True) if body.filters else None
    with engine.admit(1):
        vector = await _query_vector(engine, body.text, body.image, body.templates)
    hits = await anyio.to_thread.run_sync(
        lambda: index.search_vector(vector, body.k, body.per_slide, filters, body.exclude_case)
    )
    return SearchResponse(hits=hits)


@router.post("/search/slides", summary="Slides ranked by a text (several texts: per-class slide scores)",
             response_model=SlidesResponse)  # fmt: skip
async def search_slides(body: SlideSearchRequest, request: Request, engine: ReadyEngine) -> SlidesResponse:
    index = index_of(request)
    filters = body.filters.model_dump(exclude_none=True) if body.filters else None
    options = {"k": body.k, "filters": filters, "templates": body.templates}
    if body.top_k is not None:
        options["top_k"] = body.top_k
    with engine.admit(len(body.texts)):
        slides = await engine.call(lambda: index.rank_slides(engine.lm, body.texts, **options))
    return SlidesResponse(slides=[asdict(hit) for hit in slides])


@router.get("/slides/{slide}/similar", summary="Slides like this one (case retrieval)", response_model=SlidesResponse)
async def similar(
    slide: str, request: Request, k: int = Query(10, ge=1, le=1000), exclude_case: bool = True
) -> SlidesResponse:
    index = index_of(request)
    try:
        slides = await anyio.to_thread.run_sync(lambda: index.similar_slides(slide, k=k, exclude_case=exclude_case))
    except UnknownSlideError:
        raise HTTPException(404, f"no slide named {slide!r} in the index") from None
    return SlidesResponse(slides=[asdict(hit) for hit in slides])


@router.get("/slides/{slide}/heatmap", summary="Every patch's similarity to a text query", response_model=Heatmap)
async def heatmap(slide: str, request: Request, engine: ReadyEngine, query: str = Query(min_length=1)) -> Heatmap:
    return await _heatmap(request, engine, slide, query, None)


@router.post("/slides/{slide}/heatmap", summary="Every patch's similarity to a text or image query",
             response_model=Heatmap)  # fmt: skip
async def heatmap_post(slide: str, body: HeatmapRequest, request: Request, engine: ReadyEngine) -> Heatmap:
    return await _heatmap(request, engine, slide, body.text, body.image)


async def _heatmap(request: Request, engine: Engine, slide: str, text: str | None, image: str | None) -> Heatmap:
    index = index_of(request)
    _one_query(text, image)
    picture = None if image is None else await engine.picture(image, "image")
    try:
        with engine.admit(1):
            coords, size, scores = await engine.call(lambda: index.slide_scores(engine.lm, slide, text, picture))
    except UnknownSlideError:
        raise HTTPException(404, f"no slide named {slide!r} in the index") from None
    coords = np.asarray(coords)
    return Heatmap(slide=slide, patch_size=int(size), x=coords[:, 0].tolist(), y=coords[:, 1].tolist(),
                   scores=np.asarray(scores, dtype=np.float32).tolist())  # fmt: skip
