"""What every HTTP request passes through before a route (plain ASGI: a BaseHTTPMiddleware would hide
client disconnects from the endpoints):

- ``HostCheck``: the ``Host`` header must name this server (``allowed_hosts``), so a web page whose name
  an attacker re-points at 127.0.0.1 (DNS rebinding) cannot reach a server that trusts loopback clients.
- ``BodyCap``: a request body over the cap is refused with 413, whether announced by Content-Length
  (before it is read) or sent in chunks without one (when the count passes the cap); the connection is
  closed after the answer, so the rest is not read at all, and nothing of it is stored.
- ``HttpMetrics``: requests counted by method, route template and status (``rlm_http_requests_total``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import HTTPException

from .schemas import error_response

MULTIPART_SLACK = 64 * 1024  # form fields and part headers around an upload of the full size


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body passes the cap (FastAPI passes HTTPExceptions through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit:,} bytes")


def _host(scope: dict[str, Any]) -> str:
    raw = dict(scope["headers"]).get(b"host", b"").decode("latin-1").strip().lower()
    if raw.startswith("["):  # [::1]:8000
        return raw[1 : raw.find("]")] if "]" in raw else raw
    return raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw


class HostCheck:
    def __init__(self, app: Any, allowed: list[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed is None or "*" in allowed else [h.lower().strip("[]") for h in allowed]

    def _ok(self, host: str) -> bool:
        assert self.allowed is not None
        return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.allowed)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.allowed is not None and not self._ok(host := _host(scope)):
            response = error_response(
                400,
                f"the Host header {host[:100]!r} does not name this server (allowed: {', '.join(self.allowed)}); "
                "set allowed_hosts in the config to serve it",
                param="host",
                code="host_not_allowed",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyCap:
    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            response = error_response(
                413,
                f"the request body of {int(length):,} bytes is over the limit of {self.limit:,}",
                code="too_large",
            )
            response.headers["connection"] = "close"  # the rest of the body is not read, not even to drop it
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


class HttpMetrics:
    def __init__(self, app: Any, count: Callable[[str, str, int], None]) -> None:
        self.app, self.count = app, count

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception before any answer is a 500 to the client

        async def watched(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.count(scope["method"], route, status)
