"""The scheduler with an engine that batches continuously inside (``Engine.concurrent_calls > 1``, e.g.
vllm-async): batches are handed over as they are taken, so a late short request does not wait for a long
call in flight; with the default (1) it does. The real AsyncLLM case is in test_vllm_cpu.py."""

from __future__ import annotations

import threading
import time

import pytest

from rlm_local.engines.base import Request
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.scheduling.scheduler import Scheduler


class Concurrent(ScriptedEngine):
    """A scripted engine whose calls may overlap (each call sleeps as long as its prompt says)."""

    concurrent_calls = 4

    def __init__(self) -> None:
        super().__init__(self._reply)
        self._lock = threading.Lock()
        self.inflight = 0
        self.most_inflight = 0

    def generate(self, requests, deadline=None):
        with self._lock:
            self.inflight += 1
            self.most_inflight = max(self.most_inflight, self.inflight)
        try:
            return [self._one(r, deadline) for r in requests]
        finally:
            with self._lock:
                self.inflight -= 1

    @staticmethod
    def _reply(request: Request) -> str:
        time.sleep(float(request.prompt))
        return request.prompt


class Serial(Concurrent):
    concurrent_calls = 1


@pytest.mark.parametrize("engine_class, short_first", [(Concurrent, True), (Serial, False)])
def test_a_late_short_request_overtakes_a_long_call_only_when_the_engine_allows(engine_class, short_first):
    engine = engine_class()
    done: dict[str, float] = {}
    with Scheduler(engine, memo=False) as sched:

        def run(name: str, seconds: str) -> None:
            (res,) = sched.submit([Request.completion(seconds)], run_id=name)
            assert res.ok and res.text == seconds
            done[name] = time.monotonic()

        long = threading.Thread(target=run, args=("long", "1.0"))
        long.start()
        time.sleep(0.2)
        run("short", "0.05")
        long.join(5)
    assert (done["short"] < done["long"]) is short_first
    assert engine.most_inflight == (2 if short_first else 1)


def test_concurrent_calls_are_bounded_and_close_waits_for_them():
    engine = Concurrent()
    results = []
    sched = Scheduler(engine, memo=False, window_ms=0)
    threads = [
        threading.Thread(target=lambda i=i: results.extend(sched.submit([Request.completion("0.3")], run_id=f"r{i}")))
        for i in range(10)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 10 and all(r.ok for r in results)
    assert engine.most_inflight <= engine.concurrent_calls
    # close() while calls are still inside the engine: it returns only when they have finished
    callers = [
        threading.Thread(target=lambda: sched.submit([Request.completion("0.5")], run_id="late")) for _ in range(3)
    ]
    for t in callers:
        t.start()
    deadline = time.monotonic() + 5
    while engine.inflight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.inflight > 0
    sched.close()
    assert engine.inflight == 0
    for t in callers:
        t.join(5)
