"""The service as an ASGI application: routes, middleware, error answers, the page."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from . import routes_model, routes_search, routes_slides
from .errors import install_error_handlers
from .security import ApiKey, BodyLimit, SecurityHeaders
from .service import Service, service_of
from .settings import ServeSettings

logger = logging.getLogger(__name__)

STATIC = Path(str(files(__package__) / "static"))
OPENSEADRAGON = STATIC / "vendor" / "openseadragon" / "openseadragon.min.js"


def create_app(settings: ServeSettings, service: Service | None = None) -> FastAPI:
    """The application serving ``settings`` (its :class:`Service` is made here unless given)."""
    service = service or Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        await anyio.to_thread.run_sync(service.close)

    app = FastAPI(
        title="MUSK",
        version=__version__,
        summary="MUSK embeddings, zero-shot classification and slide-archive search over HTTP",
        docs_url=None,  # FastAPI's interactive docs load scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    app.include_router(_health_router())
    protected = [Depends(ApiKey(settings.api_key))]
    for module in (routes_model, routes_search, routes_slides):
        app.include_router(module.router, dependencies=protected)
    _add_page(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders)
    return app


def _health_router():
    from fastapi import APIRouter

    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @router.get("/readyz", summary="The model (and the index) are loaded", responses={503: {"description": "not yet"}})
    async def readyz(request: Request) -> JSONResponse:
        service = service_of(request)
        body = {"ready": service.ready, "model": service.settings.model, "index": service.index is not None,
                "queued": service.engine.batcher.queued if service.ready else 0}  # fmt: skip
        if service.error is not None:
            body["error"] = "the model could not be loaded (see the service's log)"
        return JSONResponse(body, status_code=200 if service.ready else 503)

    return router


def _add_page(app: FastAPI) -> None:
    if not OPENSEADRAGON.is_file():
        logger.warning("the page's slide viewer is missing (%s): run `make web` to build it", OPENSEADRAGON)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
