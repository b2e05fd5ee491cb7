"""Running an app under uvicorn in the foreground with a graceful stop: on SIGINT or SIGTERM the service
is told first (new runs refused, going runs stopped, each open stream ended with an error event and
``[DONE]``, each waiting client answered 503), then uvicorn closes the connections, then the service is
closed (REPLs, schedulers, engines, traces flushed)."""

from __future__ import annotations

from typing import Any

import uvicorn

GRACEFUL_SECONDS = 10  # uvicorn cancels what is still open after this long


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Any) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.service.begin_shutdown()
        super().handle_exit(sig, frame)


def run_server(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Serve ``app`` (made by create_service_app) on host:port until a stop signal; closes its service."""
    service = app.state.service
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SECONDS)
    try:
        _Server(config, service).run()
    finally:
        service.close()
