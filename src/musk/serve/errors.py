"""Every error answer as one JSON shape (OpenAI's): ``{"error": {"message", "type", "code"}}``, never a trace."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

#: Seconds a client is asked to wait before trying again after a 429 or 503.
RETRY_AFTER_S = 1


class Unavailable(Exception):
    """The service cannot take the request now (queue full, not ready, shutting down, too slow): 429 or 503 with
    ``Retry-After``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error_body(status: int, message: str) -> bytes:
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    phrase = HTTPStatus(status).phrase.lower().replace(" ", "_")
    return json.dumps({"error": {"message": message, "type": kind, "code": phrase}}).encode()


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(json.loads(error_body(status, message)), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map library and framework errors to answers: bad input 400, unknown names 404, overload 429/503, the
    rest 500 with no detail (the trace goes to the log)."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, validation_message(exc))

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return error_response(exc.status, str(exc), {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return error_response(400, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal error (the service's log has the details)")


def validation_message(exc: RequestValidationError) -> str:
    """The first problem of a request that does not fit its schema, in one line."""
    parts = []
    for problem in exc.errors()[:3]:
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
        parts.append(f"{where}: {problem.get('msg', 'invalid')}" if where else problem.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request"
