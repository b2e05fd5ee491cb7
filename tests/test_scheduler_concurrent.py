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


class Stoppable(ScriptedEngine):
    """A test double for an engine that can stop a request (``supports_cancel``): each request "runs" until
    its cancel event is set or 10 s pass, and records which requests were stopped."""

    supports_cancel = True

    def __init__(self) -> None:
        super().__init__(lambda r: "done")
        self.started = threading.Event()
        self.stopped: list[str] = []

    def generate(self, requests, deadline=None, cancel=None):
        assert cancel is not None and len(cancel) == len(requests)
        self.started.set()
        end = time.monotonic() + 10
        while time.monotonic() < end and not all(e.is_set() for e in cancel):
            time.sleep(0.005)
        self.stopped += [r.prompt for r, e in zip(requests, cancel) if e.is_set()]
        return super().generate(requests, deadline)


def submit_in_thread(scheduler, requests, run_id, **kw):
    out: list = []
    thread = threading.Thread(target=lambda: out.append(scheduler.submit(requests, run_id, **kw)))
    thread.start()
    return thread, out


@pytest.mark.parametrize("how", ["cancel", "timeout", "close"])
def test_work_nobody_waits_for_is_stopped_in_the_engine(how):
    engine = Stoppable()
    scheduler = Scheduler(engine, window_ms=0)
    try:
        thread, out = submit_in_thread(
            scheduler, [Request.completion("long")], "run-1", timeout=0.3 if how == "timeout" else None
        )
        assert engine.started.wait(5)
        started = time.monotonic()
        if how == "cancel":
            assert scheduler.cancel("run-1") == 1
        elif how == "close":
            scheduler.close()
        thread.join(5)
        assert out and not out[0][0].ok
        while not engine.stopped and time.monotonic() - started < 5:
            time.sleep(0.01)
        assert engine.stopped == ["long"] and time.monotonic() - started < 2
    finally:
        scheduler.close()


def test_a_request_another_caller_still_waits_for_keeps_running():
    engine = Stoppable()
    scheduler = Scheduler(engine, window_ms=0)
    try:
        req = Request.completion("shared")
        first, _ = submit_in_thread(scheduler, [req], "run-1")
        assert engine.started.wait(5)
        second, out = submit_in_thread(scheduler, [req], "run-2")  # the memo: waits on the same engine work
        time.sleep(0.1)
        scheduler.cancel("run-1")
        time.sleep(0.2)
        assert engine.stopped == []  # run-2 still wants the answer
        scheduler.cancel("run-2")
        first.join(5)
        second.join(5)
        end = time.monotonic() + 2
        while not engine.stopped and time.monotonic() < end:
            time.sleep(0.01)
        assert engine.stopped == ["shared"]
    finally:
        scheduler.close()


def test_engines_that_cannot_stop_are_not_given_events():
    class Plain(ScriptedEngine):
        def generate(self, requests, deadline=None, **kwargs):
            assert not kwargs
            return super().generate(requests, deadline)

    with Scheduler(Plain(["a"]), window_ms=0) as scheduler:
        assert scheduler.submit([Request.completion("x")])[0].text == "a"
