"""A pool of pre-started sandbox workers, so a session's first cell pays no worker start-up.

    pool = SandboxPool(size=2)
    with Sandbox(context=text, pool=pool) as sb:   # takes a warm worker (or starts one if none is ready)
        ...
    pool.close()

A pooled worker has loaded its interpreter, RestrictedPython and the guards, and waits for its session
(``launch.Worker.init``: context, limits, tools, prelude); everything that depends on the session (the
context, the session's uid, the hardening, the prelude) happens after it is handed out.

Guarantees: a worker is handed out at most once and never comes back (it dies with its session), so no
worker ever runs cells of two sessions; ``take`` never waits for a start (an empty pool returns None
and the caller starts its own); a background thread refills the pool up to ``size``; ``close`` stops the
refill and kills the idle workers (so does the pool's finalizer, and an idle worker whose parent exits
ends on its own: its pipe closes); safe to share between threads.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref

from .launch import Worker

log = logging.getLogger(__name__)
WARM_SECONDS = 60.0  # how long a new worker may take to load before the pool gives up on it


def _kill_all(idle: collections.deque[Worker], lock: threading.Lock) -> None:
    with lock:
        workers = list(idle)
        idle.clear()
    for worker in workers:
        worker.kill()


class SandboxPool:
    """Pre-started sandbox workers for ``Sandbox(..., pool=...)``; ``size`` of them kept ready."""

    def __init__(self, size: int = 2) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"a sandbox pool needs a size of at least 1, got {size!r}")
        self.size = size
        self._idle: collections.deque[Worker] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_all, self._idle, self._lock)
        self._thread = threading.Thread(target=self._refill, name="sandbox-pool", daemon=True)
        self._thread.start()

    def take(self) -> Worker | None:
        """A warm worker that no session has used, or None when none is ready."""
        with self._lock:
            while self._idle:
                worker = self._idle.popleft()
                self._wake.notify()
                if worker.alive():
                    return worker
                worker.kill()
        return None

    def ready(self) -> int:
        """How many warm workers wait now."""
        with self._lock:
            return len(self._idle)

    def wait_ready(self, count: int | None = None, timeout: float = WARM_SECONDS) -> bool:
        """Blocks until ``count`` (default: size) workers are warm; False on timeout or close."""
        want, end = self.size if count is None else count, time.monotonic() + timeout
        with self._lock:
            while len(self._idle) < want and not self._closed:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.05))
            return len(self._idle) >= want

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._finalizer()  # kills the idle workers once

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refill(self) -> None:
        failures = 0
        while True:
            with self._lock:
                while not self._closed and len(self._idle) >= self.size:
                    self._wake.wait()
                if self._closed:
                    return
            try:
                worker = Worker.spawn()
            except OSError as e:
                worker = None
                log.warning("sandbox pool: could not start a worker: %s", e)
            if worker is not None and worker.wait_warm(time.monotonic() + WARM_SECONDS):
                failures = 0
                with self._lock:
                    if not self._closed:
                        self._idle.append(worker)
                        self._wake.notify_all()
                        continue
                worker.kill()
                return
            failures += 1
            time.sleep(min(30.0, 0.5 * 2**failures))  # a machine that cannot start workers: back off
