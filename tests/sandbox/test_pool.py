"""The warm sandbox pool (issue 17, item 5): pre-started workers that wait for their session, handed out
once and never again, refilled in the background, closed cleanly, shared safely between threads, and
wired into RLM as ``sandbox_pool``. (Start-up time it saves: scripts/bench_sandbox_pool.py.)"""

from __future__ import annotations

import os
import threading
import time

import pytest
from scripting import repl

from rlm_local import RLM
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.errors import RLMError
from rlm_local.sandbox import Limits, Sandbox, SandboxPool

from .conftest import alive


@pytest.fixture
def pool():
    p = SandboxPool(2)
    assert p.wait_ready(timeout=60)
    yield p
    p.close()


def test_a_session_takes_a_warm_worker_with_its_own_context_tools_and_prelude(pool):
    idle = {w.proc.pid for w in pool._idle}
    with Sandbox(
        context="the document",
        tools={"double": lambda x: 2 * x},
        prelude="def shout(s):\n    return s.upper()",
        limits=Limits(wall_seconds=10),
        pool=pool,
    ) as sb:
        assert sb._worker.proc.pid in idle
        r = sb.run("print(shout(context), double(21))")
        assert r.stdout == "THE DOCUMENT 42\n", r
        assert {"seccomp", "rlimits"} <= set(sb.hardening) or os.uname().machine != "x86_64"


def test_workers_are_never_reused_and_the_pool_refills(pool):
    seen = set()
    for i in range(4):
        with Sandbox(context=f"doc {i}", pool=pool) as sb:
            pid = sb._worker.proc.pid
            assert pid not in seen
            seen.add(pid)
            assert sb.run(f"secret = 'session {i}'").error is None
        assert not alive(pid)  # a worker dies with its session: never back in the pool
        assert pid not in {w.proc.pid for w in pool._idle}
    assert pool.wait_ready(timeout=60) and pool.ready() == 2


def test_an_empty_pool_never_makes_a_session_wait_for_it():
    p = SandboxPool(1)
    try:
        p.wait_ready(timeout=60)
        with Sandbox(context="a", pool=p) as a, Sandbox(context="b", pool=p) as b:  # the second starts its own
            assert a.run("print(context)").stdout == "a\n" and b.run("print(context)").stdout == "b\n"
    finally:
        p.close()


def test_a_dead_idle_worker_is_skipped(pool):
    victim = pool._idle[0]
    victim.kill()
    with Sandbox(context="x", pool=pool) as sb:
        assert sb._worker is not victim and sb.run("print(1)").stdout == "1\n"


def test_a_restart_after_a_crash_takes_from_the_pool_too(pool):
    with Sandbox(context="x", pool=pool, limits=Limits(wall_seconds=5)) as sb:
        first = sb._worker.proc.pid
        assert pool.wait_ready(timeout=60)
        idle = {w.proc.pid for w in pool._idle}
        sb._worker.kill()
        r = sb.run("print(context)")
        assert r.stdout.endswith("x\n") and "restarted" in r.stdout, r
        assert sb._worker.proc.pid in idle and sb._worker.proc.pid != first


def test_close_kills_idle_workers_and_stops_the_refill():
    p = SandboxPool(2)
    assert p.wait_ready(timeout=60)
    pids = [w.proc.pid for w in p._idle]
    p.close()
    time.sleep(0.2)
    assert not any(alive(pid) for pid in pids)
    p._thread.join(5)
    assert p.take() is None and not p._thread.is_alive()
    with Sandbox(context="after", pool=p) as sb:  # a closed pool is only an empty one
        assert sb.run("print(context)").stdout == "after\n"


def test_sessions_from_many_threads_get_distinct_workers(pool):
    pids, errors = [], []
    lock = threading.Lock()

    def session(i: int) -> None:
        try:
            with Sandbox(context=f"doc {i}", pool=pool, limits=Limits(wall_seconds=20)) as sb:
                out = sb.run("print(context)").stdout
                with lock:
                    pids.append(sb._worker.proc.pid)
                    if out != f"doc {i}\n":
                        errors.append(out)
        except Exception as e:  # noqa: BLE001  (collected and asserted below)
            errors.append(repr(e))

    threads = [threading.Thread(target=session, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(pids) == 6 and len(set(pids)) == 6


def test_pool_size_is_checked():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError):
            SandboxPool(bad)  # type: ignore[arg-type]


def test_rlm_uses_and_owns_a_pool():
    engine = ScriptedEngine([repl("print(len(context))"), repl("FINAL('done')")] * 3)
    with pytest.raises(RLMError):
        RLM(backend="scripted", engine=engine, sandbox_pool=-1)
    rlm = RLM(backend="scripted", engine=engine, sandbox_pool=1)
    pool = rlm.settings.sandbox_pool
    try:
        assert isinstance(pool, SandboxPool) and pool.wait_ready(timeout=60)
        idle = {w.proc.pid for w in pool._idle}
        assert rlm.completion("some text", "q").response == "done"
        assert not idle & {w.proc.pid for w in pool._idle}  # the run took the warm one
    finally:
        rlm.close()
    assert pool._closed  # the RLM made it, so the RLM closed it
    shared = SandboxPool(1)
    try:
        rlm = RLM(backend="scripted", engine=engine, sandbox_pool=shared)
        assert rlm.completion("more text", "q").response == "done"
        rlm.close()
        assert not shared._closed  # a pool given by the caller stays the caller's
    finally:
        shared.close()
