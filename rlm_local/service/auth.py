"""API keys and per-key limits. With no keys configured only loopback clients are served (owner "local");
with keys, every /v1 request needs ``Authorization: Bearer <key>`` and sees only its own key's files,
sessions and runs. Limits: concurrent runs and tokens per minute (a sliding 60-second window of the tokens
finished runs used; a key over it gets 429 until the window drains). A 429 says when to retry
(``Retry-After``): for tokens, when enough of the window has drained; for concurrent runs, in a second."""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from dataclasses import dataclass

from .config import KeyConfig
from .schemas import ApiError

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
WINDOW_SECONDS = 60.0


@dataclass
class Caller:
    owner: str  # the key's name, or "local"
    key: KeyConfig | None


class Access:
    def __init__(self, keys: dict[str, KeyConfig]) -> None:
        self.keys = keys
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}

    def identify(self, authorization: str | None, client_host: str | None) -> Caller:
        if not self.keys:
            if client_host not in LOOPBACK:
                raise ApiError(
                    403, "this server has no API keys configured and serves loopback clients only", "permission_error"
                )
            return Caller("local", None)
        token = (authorization or "").removeprefix("Bearer ").strip()
        for key, cfg in self.keys.items():
            if token and hmac.compare_digest(token.encode(), key.encode()):
                return Caller(cfg.name, cfg)
        raise ApiError(401, "invalid or missing API key (send Authorization: Bearer <key>)", "authentication_error")

    def start_run(self, caller: Caller) -> None:
        """Count a run against the caller's limits, or raise ApiError(429) with a Retry-After."""
        cfg = caller.key
        with self._lock:
            if cfg and cfg.tokens_per_minute is not None:
                wait = self._wait(caller.owner, cfg.tokens_per_minute)
                if wait > 0:
                    raise ApiError(
                        429,
                        f"tokens-per-minute limit ({cfg.tokens_per_minute}) reached for this key; retry in {wait:.0f} s",
                        "rate_limit_error",
                        code="tokens_per_minute",
                        retry_after=wait,
                    )
            running = self._running.get(caller.owner, 0)
            if cfg and cfg.max_concurrent_runs is not None and running >= cfg.max_concurrent_runs:
                raise ApiError(
                    429,
                    f"concurrent-run limit ({cfg.max_concurrent_runs}) reached for this key; retry when a run ends",
                    "rate_limit_error",
                    code="concurrent_runs",
                    retry_after=1,
                )
            self._running[caller.owner] = running + 1

    def end_run(self, caller: Caller, tokens: int) -> None:
        with self._lock:
            self._running[caller.owner] = max(0, self._running.get(caller.owner, 1) - 1)
            self._tokens.setdefault(caller.owner, deque()).append((time.monotonic(), tokens))

    def _wait(self, owner: str, limit: int) -> float:
        """Seconds until the owner's tokens in the window fall below ``limit`` (0: now)."""
        window = self._tokens.get(owner)
        if not window:
            return 0.0
        now = time.monotonic()
        while window and window[0][0] < now - WINDOW_SECONDS:
            window.popleft()
        used = sum(t for _, t in window)
        if used < limit:
            return 0.0
        for at, tokens in window:  # oldest first: each leaves the window WINDOW_SECONDS after it came
            used -= tokens
            if used < limit:
                return max(at + WINDOW_SECONDS - now, 0.0)
        return WINDOW_SECONDS
