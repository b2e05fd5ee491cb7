"""API keys and per-key limits. With no keys configured only loopback clients are served (owner "local");
with keys, every /v1 request needs ``Authorization: Bearer <key>`` and sees only its own key's files,
sessions and runs. Limits: concurrent runs and tokens per minute (a sliding 60-second window of the tokens
finished runs used; a key over it gets 429 until the window drains)."""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from dataclasses import dataclass

from .config import KeyConfig

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Denied(Exception):
    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


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
                raise Denied(
                    403, "this server has no API keys configured and serves loopback clients only", "permission_error"
                )
            return Caller("local", None)
        token = (authorization or "").removeprefix("Bearer ").strip()
        for key, cfg in self.keys.items():
            if token and hmac.compare_digest(token.encode(), key.encode()):
                return Caller(cfg.name, cfg)
        raise Denied(401, "invalid or missing API key (send Authorization: Bearer <key>)", "authentication_error")

    def start_run(self, caller: Caller) -> None:
        """Count a run against the caller's limits, or raise Denied(429)."""
        cfg = caller.key
        with self._lock:
            if cfg and cfg.tokens_per_minute is not None and self._used(caller.owner) >= cfg.tokens_per_minute:
                raise Denied(
                    429,
                    f"tokens-per-minute limit ({cfg.tokens_per_minute}) reached for this key; retry in a minute",
                    "rate_limit_error",
                )
            running = self._running.get(caller.owner, 0)
            if cfg and cfg.max_concurrent_runs is not None and running >= cfg.max_concurrent_runs:
                raise Denied(
                    429, f"concurrent-run limit ({cfg.max_concurrent_runs}) reached for this key", "rate_limit_error"
                )
            self._running[caller.owner] = running + 1

    def end_run(self, caller: Caller, tokens: int) -> None:
        with self._lock:
            self._running[caller.owner] = max(0, self._running.get(caller.owner, 1) - 1)
            self._tokens.setdefault(caller.owner, deque()).append((time.monotonic(), tokens))

    def _used(self, owner: str) -> int:
        window = self._tokens.get(owner)
        if not window:
            return 0
        cutoff = time.monotonic() - 60
        while window and window[0][0] < cutoff:
            window.popleft()
        return sum(t for _, t in window)
