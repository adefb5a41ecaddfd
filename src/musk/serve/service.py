"""What the service holds: the model (loaded in the background), the index and its slides, and its state."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from ..loaded import load
from ..models.weights import weights_option
from .engine import Engine
from .errors import Unavailable
from .settings import ServeSettings
from .slides import SlideTiles

logger = logging.getLogger(__name__)


class Service:
    """The index is opened when the service is made (a bad folder stops it at once); the model loads in a
    thread started by :meth:`start`, so the process answers health checks meanwhile."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.index = None
        self.slides: SlideTiles | None = None
        if settings.index is not None:
            from ..search import open_index

            self.index = open_index(settings.index)
            self.slides = SlideTiles((record.name, record.path) for record in self.index.slides())
        self.engine: Engine | None = None
        self.error: BaseException | None = None
        self.on_failure: Callable[[], None] = lambda: None
        self._loader = threading.Thread(target=self._load, name="musk-load", daemon=True)

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def start(self) -> None:
        self._loader.start()

    def close(self) -> None:
        """Finish the queued work and stop the model's worker."""
        if self.engine is not None:
            self.engine.close(self.settings.timeout_s)

    def _load(self) -> None:
        s = self.settings
        try:
            lm = load(model=s.model, weights=weights_option(s.weights), device=s.device, precision=s.precision,
                      tokenizer=s.tokenizer, cache_dir=s.cache_dir, seed=s.seed)  # fmt: skip
            _ = lm.tokenizer  # loaded now: a missing tokenizer stops the start, not the first text request
            if self.index is not None:
                self.index.check_model(lm)
            self.engine = Engine(lm, s)
            logger.info("ready: %s on %s (%s)", lm.architecture, lm.device, s.precision)
        except Exception as e:  # noqa: BLE001 - reported by the command once the server has stopped
            logger.error("the model could not be loaded: %s", e)
            self.error = e
            self.on_failure()


def service_of(request: Request) -> Service:
    return request.app.state.service


async def ready_engine(request: Request) -> Engine:
    """A route dependency: the engine, or 503 while the model loads (async: FastAPI would run a plain function
    in a worker thread, a thread hop per request)."""
    engine = service_of(request).engine
    if engine is None:
        raise Unavailable(503, "the model is still loading; retry shortly (GET /readyz says when it is ready)")
    return engine


ReadyEngine = Annotated[Engine, Depends(ready_engine)]
