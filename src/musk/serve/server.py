"""Running the service: uvicorn on the settings' address, stopping cleanly on SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging

from .app import create_app
from .service import Service
from .settings import ServeSettings

logger = logging.getLogger(__name__)

#: Seconds in-flight requests get to finish after SIGTERM, beyond their own time limit.
SHUTDOWN_GRACE_S = 5
#: Seconds an idle connection is kept open. Longer than clients' own expiry (httpx: 5 s) and than a proxy's
#: idle timeout (60 s is common), so that the client or proxy closes first. Equal timeouts race: the service
#: closes a connection as a client sends on it, and the client gets a reset instead of an answer.
KEEP_ALIVE_S = 75


def serve(settings: ServeSettings) -> None:
    """Serve until stopped. Requests in flight when SIGTERM comes are finished (new connections are refused);
    a model that cannot be loaded stops the server and its error is raised here."""
    import uvicorn

    service = Service(settings)
    app = create_app(settings, service)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=int(settings.timeout_s + SHUTDOWN_GRACE_S),
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        log_level="info",
    )
    server = uvicorn.Server(config)
    service.on_failure = lambda: setattr(server, "should_exit", True)
    server.run()
    if service.error is not None:
        raise service.error
