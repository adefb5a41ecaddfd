"""``musk serve``: the model and the archive search over HTTP, with a page to search and browse slides.

Needs the ``[serve]`` extra (FastAPI, uvicorn). See ``docs/serve.md``.
"""

from .app import create_app
from .server import serve
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve"]
