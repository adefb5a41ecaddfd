"""``/v1/slides``: the index's slides, their Deep Zoom images and single patches."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from ..search import UnknownSlideError
from .service import service_of
from .slides import SlideNotFound, SlideTiles

router = APIRouter(prefix="/v1/slides", tags=["slides"])

JPEG = {"content": {"image/jpeg": {}}, "description": "a JPEG image"}
#: Browsers may keep tiles and patches: a slide's pixels do not change while the index names it.
CACHE = {"Cache-Control": "private, max-age=3600"}


def tiles_of(request: Request) -> SlideTiles:
    slides = service_of(request).slides
    if slides is None:
        raise HTTPException(404, "this service has no index (start it with --index)")
    return slides


async def _in_thread(fn, *args):
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except SlideNotFound as e:
        raise HTTPException(404, str(e)) from None


#: What ``GET /v1/slides`` tells of each slide.
LISTED = ("name", "case", "label", "patches", "patch_size_level0", "magnification")


@router.get("", summary="The slides of the index")
async def slides(request: Request) -> dict:
    tiles = tiles_of(request)
    records = service_of(request).index.slides()
    return {"slides": [{**{f: getattr(r, f) for f in LISTED}, "viewable": r.name in tiles} for r in records]}


@router.get(
    "/{slide}.dzi", summary="A slide's Deep Zoom descriptor", responses={200: {"content": {"application/xml": {}}}}
)
async def dzi(slide: str, request: Request) -> Response:
    xml = await _in_thread(tiles_of(request).dzi, slide)
    return Response(xml, media_type="application/xml", headers=CACHE)


@router.get("/{slide}_files/{level}/{col}_{row}.jpeg", summary="A Deep Zoom tile", responses={200: JPEG})
async def tile(slide: str, level: int, col: int, row: int, request: Request) -> Response:
    data = await _in_thread(tiles_of(request).tile, slide, level, col, row)
    return Response(data, media_type="image/jpeg", headers=CACHE)


@router.get("/{slide}/patch", summary="One patch of a slide (a hit) as an image", responses={200: JPEG})
async def patch(
    slide: str,
    request: Request,
    x: int = Query(ge=0, description="level-0 left edge"),
    y: int = Query(ge=0, description="level-0 top edge"),
    patch_size: int | None = Query(None, ge=1, le=16384, description="level-0 side (default: the index's)"),
    size: int = Query(256, ge=16, le=1024, description="side of the returned image in pixels"),
) -> Response:
    tiles = tiles_of(request)
    if patch_size is None:
        patch_size = await _record_patch_size(request, slide)
    data = await _in_thread(tiles.patch, slide, x, y, patch_size, size)
    return Response(data, media_type="image/jpeg", headers=CACHE)


async def _record_patch_size(request: Request, slide: str) -> int:
    index = service_of(request).index
    try:
        return int(index.slide(slide).patch_size_level0)
    except UnknownSlideError:
        raise HTTPException(404, f"no slide named {slide!r} in the index") from None
