"""Scale-out for real: two OpenAI-compatible model servers behind a real router on 127.0.0.1: ``vllm-router``
(``--policy consistent_hash``, the supported one) and the SGLang router (``--policy manual``).

Each worker is rlm-local's own HTTP server (``rlm_local.service.bare.create_app``) in its own process, over a
scripted engine whose replies drive an RLM trajectory (root turns, ``llm_query``, ``llm_query_batched`` and
an ``rlm_query`` child run): the router is what is under test, and a scripted backend makes every run
take the same path. Every worker writes one JSON line per request it receives (path, the session header
as it arrived, and the run's tag read from the body), so the test sees where the router sent each request.

Checks: every request of one RLM run (root, sub-calls, the child run) reaches the same worker, with the
run id in ``X-Session-ID`` (vllm-router passes the header on; the SGLang router does not, so there the
run is told by its tag); different runs use both workers; a worker killed in the middle of a run makes
the router move the run to the other worker, and with no worker left a request fails with the router's
reason; nothing is left running afterwards. The header itself is checked against a plain HTTP server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # waits on limits, servers, browsers or clusters: `pytest -q` leaves it out

ROOT = Path(__file__).resolve().parents[1]
HEADER = "X-Session-ID"  # vllm-router's; rlm-local's default
SGLANG_HEADER = "X-SMG-Routing-Key"
TAG = re.compile(r"\btag-(\w+)")


def router_path(name: str) -> str | None:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    return found if Path(found).exists() else None


# name -> (command before the common flags, policy flags, session header). Fast health checks and a
# circuit breaker that opens on the first failure leave a dead worker out within about a second; with the
# defaults vllm-router took ten failed attempts (about a second here) before its circuit opened.
ROUTERS = {
    "vllm-router": (
        ["vllm-router"],
        [
            "--policy",
            "consistent_hash",
            "--health-check-interval-secs",
            "1",
            "--health-failure-threshold",
            "1",
            "--cb-failure-threshold",
            "1",
        ],
        HEADER,
    ),
    "sglang-router": (
        ["sglang-router", "launch"],
        [
            "--policy",
            "manual",
            "--health-check-interval-secs",
            "1",
            "--health-failure-threshold",
            "1",
            "--cb-failure-threshold",
            "1",
            "--log-level",
            "warn",
        ],
        SGLANG_HEADER,
    ),
}
SLOW_SUB_SECONDS = 4.0  # the sub-call during which a worker is killed


# ---- the worker process (run as `python tests/test_router.py worker PORT LOG`) ------------------------------
def worker_reply(request, on_slow) -> str:
    """The scripted model: a parent run asks two sub-calls and a child run, then answers."""
    from scripting import is_root, last_user, repl

    if not is_root(request):
        text = request.prompt if request.prompt is not None else last_user(request)
        if "slow sub" in text:  # the test kills this worker while it sleeps here
            on_slow()
            time.sleep(SLOW_SUB_SECONDS)
        return "sub answer"
    first = request.messages[1]["content"]
    tag = TAG.search(first).group(1)
    done = "Output of your code" in last_user(request)
    if "child task" in first:
        return f"FINAL(child {tag})" if done else repl("print(len(context.split()))")
    if done:
        return f"FINAL(done {tag})"
    slow = "slow " if tag.startswith("slow") else ""
    return repl(
        f"a = llm_query('{slow}sub one tag-{tag}')\n"
        f"b = llm_query_batched(['sub two tag-{tag}', 'sub three tag-{tag}'])\n"
        f"c = rlm_query('child task tag-{tag}', context='x y z')\n"
        "print(a, b, c)"
    )


def worker_main(port: int, log_path: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import uvicorn

    from rlm_local.engines.scripted import ScriptedEngine
    from rlm_local.service.bare import create_app

    log = open(log_path, "a", buffering=1)
    lock = threading.Lock()

    def on_slow() -> None:
        with lock:
            log.write(json.dumps({"slow": True}) + "\n")

    app = create_app(ScriptedEngine(lambda request: worker_reply(request, on_slow), model_name="scripted"))

    @app.middleware("http")
    async def record(request, call_next):
        if request.method == "POST":
            tag = TAG.search((await request.body()).decode("utf-8", "replace"))
            with lock:
                log.write(
                    json.dumps(
                        {
                            "path": request.url.path,
                            "session": request.headers.get(HEADER),
                            "tag": tag.group(1) if tag else None,
                        }
                    )
                    + "\n"
                )
        return await call_next(request)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---- fixtures -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class Cluster:
    """Two workers and a router, all on 127.0.0.1; ``stop()`` kills every process it started."""

    def __init__(self, tmp: Path, router: str) -> None:
        command, flags, self.header = ROUTERS[router]
        command = [router_path(command[0]), *command[1:]]
        self.procs: list[subprocess.Popen] = []
        self.workers: dict[str, tuple[subprocess.Popen, Path]] = {}
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        try:
            for i in range(2):
                port, log = free_port(), tmp / f"worker{i}.jsonl"
                proc = self._start([sys.executable, __file__, "worker", str(port), str(log)], env, tmp / f"w{i}.err")
                self.workers[f"http://127.0.0.1:{port}"] = (proc, log)
            for url, (proc, _) in self.workers.items():
                wait_http(url + "/health", proc)
            self.port = free_port()
            self.router = self._start(
                [
                    *command,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--worker-urls",
                    *self.workers,
                    "--prometheus-port",
                    str(free_port()),
                    *flags,
                ],
                env,
                tmp / "router.err",
            )
            self.url = f"http://127.0.0.1:{self.port}"
            wait_http(self.url + "/v1/models", self.router)
        except BaseException:
            self.stop()
            raise

    def _start(self, cmd: list[str], env: dict, err: Path) -> subprocess.Popen:
        with open(err, "wb") as out:  # the router logs to stdout
            proc = subprocess.Popen(
                cmd, env=env, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    def log(self) -> list[tuple[str, dict]]:
        """(worker url, request record) for every request the workers received so far."""
        out = []
        for url, (_, path) in self.workers.items():
            if path.exists():
                out += [(url, json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
        return out

    def kill(self, url: str) -> None:
        proc = self.workers[url][0]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture(params=list(ROUTERS))
def cluster(request, tmp_path):
    if router_path(ROUTERS[request.param][0][0]) is None:
        extra = "pip install 'rlm-local[router]'" if request.param == "vllm-router" else "pip install sglang-router"
        pytest.skip(f"{request.param} is not installed: {extra}")
    c = Cluster(tmp_path, request.param)
    yield c
    c.stop()
    assert all(p.poll() is not None for p in c.procs), "a router or worker process outlived the test"


def make_rlm(cluster: Cluster):
    from rlm_local import RLM

    # model_name given: the SGLang router's own /v1/models lists "unknown", not the workers' model.
    return RLM(
        backend="openai",
        backend_kwargs={
            "base_url": cluster.url,
            "model_name": "scripted",
            "session_header": cluster.header,
            "max_retries": 3,
            "backoff": 0.2,
        },
        max_depth=2,
        max_iterations=4,
        max_timeout=120,
    )


def run_one(rlm, tag: str) -> tuple[str, object]:
    run_id = f"run-{tag}-{uuid.uuid4().hex[:6]}"  # the tag is in every request body of the run
    return run_id, rlm.completion("some context to read", f"question tag-{tag}", run_id=run_id)


REQUESTS_PER_RUN = 7  # parent: 2 root turns + 3 sub-calls; child run: 2 root turns


# ---- tests ------------------------------------------------------------------------------------------------------
def test_each_run_sticks_to_one_worker_and_runs_spread(cluster):
    from concurrent.futures import ThreadPoolExecutor

    rlm = make_rlm(cluster)
    runs: dict[str, object] = {}
    with ThreadPoolExecutor(4) as pool:
        for round_ in range(4):  # until both workers have runs; 16 runs all on one worker: p = 2**-15
            for run_id, result in pool.map(lambda i, r=round_: run_one(rlm, f"r{r}x{i}"), range(4)):
                runs[run_id] = result
            if len({url for url, rec in cluster.log()}) == 2:
                break
    rlm.close()
    for run_id, result in runs.items():
        tag = run_id.split("-")[1]
        assert result.response == f"done {tag}", (run_id, result.response)
        assert f"child {tag}" in json.dumps(result.trajectory)
    by_run: dict[str, list[str]] = {}
    tags = {run_id.split("-")[1]: run_id for run_id in runs}
    for url, rec in cluster.log():
        run_id = tags[rec["tag"]]
        if cluster.header == HEADER:  # vllm-router passes the header on; it carries the run id
            assert rec["session"] == run_id, f"request without its run id in {HEADER}: {rec}"
        by_run.setdefault(run_id, []).append(url)
    assert set(by_run) == set(runs)
    for run_id, urls in by_run.items():
        assert len(urls) == REQUESTS_PER_RUN, (run_id, urls)
        assert len(set(urls)) == 1, f"run {run_id} was split over workers: {urls}"
    assert len({urls[0] for urls in by_run.values()}) == 2, "all runs went to one worker"


def test_a_worker_killed_mid_run_moves_the_run_to_the_other(cluster):
    rlm = make_rlm(cluster)
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.update(out=run_one(rlm, "slow1")))
    thread.start()
    deadline = time.monotonic() + 30
    victim = None
    while victim is None and time.monotonic() < deadline:  # the worker that is answering the slow sub-call
        victim = next((url for url, rec in cluster.log() if rec.get("slow")), None)
        time.sleep(0.05)
    assert victim is not None, "the run never reached its slow sub-call"
    cluster.kill(victim)
    thread.join(120)
    rlm.close()
    assert not thread.is_alive()
    run_id, result = box["out"]
    survivor = next(url for url in cluster.workers if url != victim)
    after = [rec for url, rec in cluster.log() if url == survivor and rec.get("tag") == "slow1"]
    assert result.response == "done slow1", result.response
    # The surviving worker served the interrupted sub-call and every later request of the run: the batched
    # pair, the child run's two turns and the parent's last turn (6; more if a retry also reached it).
    assert len(after) >= REQUESTS_PER_RUN - 1, after

    # With no worker left, a request fails alone and says why (the router's 5xx), without hanging.
    from rlm_local.engines import Request
    from rlm_local.engines.openai_http import OpenAIEngine

    cluster.kill(survivor)
    with OpenAIEngine(
        model_name="scripted",
        base_url=cluster.url,
        max_retries=1,
        backoff=0.1,
        timeout=30,
        session_header=cluster.header,
    ) as engine:
        started = time.monotonic()
        (failed,) = engine.generate([Request.chat([{"role": "user", "content": "hi"}]).with_session(run_id)])
    assert time.monotonic() - started < 30
    assert not failed.ok and failed.error.startswith("openai: ") and "HTTP 5" in failed.error, failed.error


# ---- the header itself, against plain HTTP servers (no router needed) -------------------------------------------
def recording_server(seen: list[dict]):
    """rlm-local's server over the scripted worker model, in this process, recording each POST's headers."""
    from rlm_local.engines.scripted import ScriptedEngine
    from rlm_local.service.bare import create_app
    from rlm_local.testing import BackgroundServer

    app = create_app(ScriptedEngine(lambda request: worker_reply(request, lambda: None), model_name="scripted"))

    @app.middleware("http")
    async def record(request, call_next):
        if request.method == "POST":
            seen.append({k.lower(): v for k, v in request.headers.items()})
        return await call_next(request)

    return BackgroundServer(app)


def test_every_request_of_a_run_and_its_child_carries_the_run_id():
    from rlm_local import RLM

    seen: list[dict] = []
    with recording_server(seen) as url:
        rlm = RLM(
            backend="openai",
            backend_kwargs={"base_url": url, "model_name": "scripted"},
            max_depth=2,
            max_iterations=4,
            max_timeout=60,
        )
        result = rlm.completion("some context", "question tag-h1")
        rlm.close()
    assert result.response == "done h1"
    assert len(seen) == REQUESTS_PER_RUN
    assert {h.get("x-session-id") for h in seen} == {result.run_id}


def test_session_header_name_is_configurable_and_values_are_safe():
    from rlm_local.engines import EngineError, Request
    from rlm_local.engines.openai_http import OpenAIEngine

    seen: list[dict] = []
    request = Request.chat([{"role": "user", "content": "hi"}])
    with recording_server(seen) as url:
        for header in (SGLANG_HEADER, None):
            with OpenAIEngine(model_name="scripted", base_url=url, session_header=header) as engine:
                assert engine.generate([request.with_session("run-7")])[0].ok
        with OpenAIEngine(model_name="scripted", base_url=url) as engine:
            for _ in range(2):  # any run id string: one not fit for a header goes as a stable digest
                assert engine.generate([request.with_session("lauf-ü\n1")])[0].ok
            assert engine.generate([request])[0].ok  # no run: no header
    assert seen[0].get("x-smg-routing-key") == "run-7" and "x-session-id" not in seen[0]
    assert "x-smg-routing-key" not in seen[1] and "x-session-id" not in seen[1]
    assert re.fullmatch(r"[0-9a-f]{32}", seen[2]["x-session-id"])
    assert seen[2]["x-session-id"] == seen[3]["x-session-id"]
    assert "x-session-id" not in seen[4]
    assert request.with_session("a") == request and request.with_session("a").key() == request.key()
    with pytest.raises(EngineError, match="session_header"):
        OpenAIEngine(model_name="scripted", base_url="http://127.0.0.1:9/v1", session_header="X Session")


def test_without_a_router_several_base_urls_keep_each_run_on_one_server():
    """The fallback: client-side rendezvous hashing on the run id. Hashing the prompt instead would send
    every run to one server, since all root turns open with the same system prompt."""
    from rlm_local.engines import Request
    from rlm_local.engines.openai_http import OpenAIEngine

    seen = [[], []]
    servers = [recording_server(seen[0]), recording_server(seen[1])]
    urls = [s.start() for s in servers]
    try:
        with OpenAIEngine(model_name="scripted", base_url=urls) as engine:
            prompt = "the same long system prompt " * 60
            for run in range(12):
                reqs = [
                    Request.chat([{"role": "user", "content": prompt + str(i)}]).with_session(f"run-{run}")
                    for i in range(3)
                ]
                assert len({engine.server_for(r) for r in reqs}) == 1
                assert all(r.ok for r in engine.generate(reqs))
            assert (
                len(
                    {engine.server_for(Request.chat([{"role": "user", "content": prompt + str(i)}])) for i in range(12)}
                )
                == 1
            )  # without a run id: the prompt's start decides
    finally:
        for server in servers:
            server.stop()
    by_server = [{h["x-session-id"] for h in s} for s in seen]
    assert by_server[0] and by_server[1] and not by_server[0] & by_server[1]
    assert sum(len(s) for s in seen) == 36


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker_main(int(sys.argv[2]), sys.argv[3])
