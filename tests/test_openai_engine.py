"""The `openai` engine against real servers on loopback: our own bare server (service/bare.py) under uvicorn for the protocol,
and a tiny http.server that misbehaves on purpose (errors, 429, garbage, hanging) for the failure paths."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("fastapi", reason="the test server needs the [server] extra (fastapi, uvicorn)")

from rlm_local.engines import make_engine  # noqa: E402
from rlm_local.engines.base import Request  # noqa: E402
from rlm_local.engines.openai_http import OpenAIEngine, normalize_base_url, rendezvous_order  # noqa: E402
from rlm_local.engines.scripted import ScriptedEngine  # noqa: E402
from rlm_local.service.bare import create_app
from rlm_local.testing import BackgroundServer  # noqa: E402

FAST = dict(backoff=0.01, max_backoff=0.05)


def tagged_reply(tag: str):
    def reply(request: Request) -> str:
        text = request.prompt if request.prompt is not None else request.messages[-1]["content"]
        if "FAIL" in text:
            raise RuntimeError("asked to fail")
        return f"{tag}:{text[-12:]}"

    return reply


@pytest.fixture(scope="module")
def two_servers():
    """Two of our own servers, each over a scripted engine whose replies name the server."""
    engines = [ScriptedEngine(tagged_reply("A"), model_name="m"), ScriptedEngine(tagged_reply("B"), model_name="m")]
    servers = [BackgroundServer(create_app(e)) for e in engines]
    urls = [s.start() for s in servers]
    yield engines, urls
    for s in servers:
        s.stop()


def test_chat_and_completions_round_trip(two_servers):
    engines, urls = two_servers
    with make_engine("openai", base_url=urls[0], max_retries=0) as engine:  # model_name discovered from /v1/models
        results = engine.generate(
            [
                Request.chat(
                    [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}], max_tokens=9
                ),
                Request.completion("complete me", temperature=0.5, stop=["\n"], seed=4),
            ]
        )
        assert engine.model_name == "m"
    assert [r.text for r in results] == ["A:hello", "A:complete me"]
    assert all(r.ok and r.usage.calls == 1 and r.usage.prompt_tokens > 0 for r in results)
    assert results[0].usage.cached_tokens == 0  # the scripted engine reports 0, the server passes it through
    chat = next(r for r in engines[0].requests[-2:] if r.messages is not None)
    completion = next(r for r in engines[0].requests[-2:] if r.prompt is not None)
    assert chat.messages[0] == {"role": "system", "content": "sys"} and chat.sampling.max_tokens == 9
    assert completion.prompt == "complete me"
    assert completion.sampling.stop == ("\n",) and completion.sampling.seed == 4
    assert completion.sampling.temperature == 0.5


def test_endpoint_override(two_servers):
    engines, urls = two_servers
    with OpenAIEngine("m", base_url=urls[0] + "/v1/", endpoint="completions") as engine:
        (result,) = engine.generate([Request.chat([{"role": "user", "content": "as text"}])])
    assert result.ok and engines[0].requests[-1].prompt == "<user>\nas text\n<assistant>\n"
    with OpenAIEngine("m", base_url=urls[0], endpoint="chat") as engine:
        (result,) = engine.generate([Request.completion("as chat")])
    assert result.text == "A:as chat" and engines[0].requests[-1].messages == ({"role": "user", "content": "as chat"},)


def test_one_failing_request_fails_alone(two_servers):
    _, urls = two_servers
    with OpenAIEngine("m", base_url=urls[0], max_retries=1, **FAST) as engine:
        results = engine.generate([Request.completion(f"q{i}" + (" FAIL" if i == 2 else "")) for i in range(5)])
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert [r.text for r in results if r.ok] == ["A:q0", "A:q1", "A:q3", "A:q4"]
    assert results[2].error.startswith("openai: ") and "HTTP 502" in results[2].error  # the engine failed
    assert "asked to fail" in results[2].error and results[2].finish_reason == "error"


def test_shared_prefixes_stick_to_one_server_and_others_spread(two_servers):
    engines, urls = two_servers
    shared = "You read one chunk of a long report. " * 60  # longer than affinity_chars
    with OpenAIEngine("m", base_url=urls, affinity_chars=1024, max_concurrency=64) as engine:  # no spilling here
        siblings = [Request.completion(shared + f"Question {i}?") for i in range(8)]
        results = engine.generate(siblings)
        assert len({r.text[0] for r in results}) == 1  # all answered by the same server
        assert {engine.server_for(r) for r in siblings} == {
            urls[0] + "/v1" if results[0].text[0] == "A" else urls[1] + "/v1"
        }
        distinct = [Request.completion(f"Topic {i}: " + "x" * 40) for i in range(40)]
        tags = [r.text[0] for r in engine.generate(distinct)]
    assert set(tags) == {"A", "B"} and min(tags.count("A"), tags.count("B")) >= 5
    # below the load limit, routing is a pure function of the prefix: the same requests go to the same servers
    with OpenAIEngine("m", base_url=urls, max_concurrency=64) as engine:
        assert [r.text[0] for r in engine.generate(distinct)] == tags


def test_full_server_spills_to_the_next():
    """max_concurrency is per server: a fifth same-prefix request while four are in flight goes elsewhere."""
    slow = [ScriptedEngine(lambda r, t=t: (time.sleep(0.3), t)[1], model_name="m") for t in "AB"]
    with BackgroundServer(create_app(slow[0])) as a, BackgroundServer(create_app(slow[1])) as b:
        with OpenAIEngine("m", base_url=[a, b], max_concurrency=2) as engine:
            tags = [r.text for r in engine.generate([Request.completion("same prefix") for _ in range(4)])]
    assert sorted(tags) == ["A", "A", "B", "B"]


def test_rendezvous_order_is_stable_and_balanced():
    servers = ["http://a/v1", "http://b/v1", "http://c/v1"]
    firsts = [rendezvous_order(f"key {i}", servers)[0] for i in range(300)]
    assert all(firsts.count(s) > 60 for s in servers)
    assert firsts == [rendezvous_order(f"key {i}", list(reversed(servers)))[0] for i in range(300)]
    # removing a server only moves the keys that were on it
    moved = [
        f for i, f in enumerate(firsts) if f != "http://c/v1" and rendezvous_order(f"key {i}", servers[:2])[0] != f
    ]
    assert moved == []


def test_normalize_base_url():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    with pytest.raises(Exception, match="base_url"):
        normalize_base_url("localhost:8000")


# ---- a misbehaving server ------------------------------------------------------------------------------------
class Flaky(BaseHTTPRequestHandler):
    """The first path segment picks the behaviour; counters and headers are recorded on the server."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        srv = self.server
        mode = self.path.strip("/").split("/")[0]
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with srv.lock:
            srv.hits[mode] = srv.hits.get(mode, 0) + 1
            hits = srv.hits[mode]
            srv.active[mode] = srv.active.get(mode, 0) + 1
            srv.max_active[mode] = max(srv.max_active.get(mode, 0), srv.active[mode])
            srv.auth.append(self.headers.get("authorization"))
        self.mode = mode
        try:
            self.answer(mode, hits, body)
        finally:
            self.leave()

    def leave(self) -> None:
        """No longer in flight: counted before the answer goes out, since the client may send its next
        request the moment it has the answer (counting after the write raced with that next request)."""
        if self.mode is not None:
            with self.server.lock:
                self.server.active[self.mode] -= 1
            self.mode = None

    def answer(self, mode: str, hits: int, body: dict) -> None:
        ok = {
            "choices": [{"text": "fine", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 2},
        }
        if mode == "e500":
            return self.send(500, {"error": {"message": "kaboom", "type": "server_error"}})
        if mode == "e400":
            return self.send(400, {"error": {"message": "prompt too long"}})
        if mode == "r429":
            if hits == 1:
                return self.send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
            return self.send(200, ok)
        if mode == "garbage":
            return self.send(200, b"<html>not json")
        if mode == "nochoices":
            return self.send(200, {"object": "list"})
        if mode == "hang":
            self.server.release.wait(5)
            return self.send(200, ok)
        if mode == "slow":
            time.sleep(0.1)
            return self.send(200, ok)
        if mode == "slowgen":  # a long generation: the answer comes after 1.2 s
            time.sleep(1.2)
            return self.send(200, ok)
        if mode == "nullcached":
            return self.send(200, {**ok, "usage": {**ok["usage"], "prompt_tokens_details": {"cached_tokens": None}}})
        if mode == "cached":
            return self.send(200, {**ok, "usage": {**ok["usage"], "prompt_tokens_details": {"cached_tokens": 7}}})
        if mode == "nousage":
            return self.send(200, {"choices": [{"text": "abcdefgh", "finish_reason": "stop"}]})
        self.send(404, {"error": "no such mode"})

    def send(self, status: int, payload, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.leave()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def flaky():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    srv.daemon_threads = True
    srv.lock, srv.hits, srv.active, srv.max_active, srv.auth = threading.Lock(), {}, {}, {}, []
    srv.release = threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def one(url: str, **kwargs):
    with OpenAIEngine("m", base_url=url, **{**FAST, **kwargs}) as engine:
        (result,) = engine.generate([Request.completion("hi")])
    return result


def test_5xx_is_retried_then_reported(flaky):
    srv, url = flaky
    result = one(f"{url}/e500/v1", max_retries=2)
    assert not result.ok and "HTTP 500: kaboom after 3 attempts" in result.error
    assert srv.hits["e500"] == 3


def test_4xx_is_not_retried(flaky):
    srv, url = flaky
    result = one(f"{url}/e400/v1", max_retries=3)
    assert result.error == f"openai: {url}/e400/v1/completions returned HTTP 400: prompt too long"
    assert srv.hits["e400"] == 1


def test_429_then_ok_succeeds(flaky):
    srv, url = flaky
    result = one(f"{url}/r429/v1", max_retries=2)
    assert result.ok and result.text == "fine" and result.finish_reason == "length"
    assert srv.hits["r429"] == 2


def test_garbage_and_missing_choices_are_clear_errors(flaky):
    srv, url = flaky
    result = one(f"{url}/garbage/v1", max_retries=3)
    assert "returned invalid JSON: '<html>not json'" in result.error and srv.hits["garbage"] == 1
    result = one(f"{url}/nochoices/v1")
    assert "reply without a completion" in result.error


def test_hanging_server_times_out(flaky):
    _, url = flaky
    started = time.monotonic()
    result = one(f"{url}/hang/v1", timeout=0.5, max_retries=2)
    assert time.monotonic() - started < 3
    assert "timed out after 0.5s" in result.error


def test_timeout_is_sized_to_the_request(flaky, monkeypatch):
    """No fixed timeout: a request under a deadline may run until it; one without gets a base plus its
    max_tokens at the slowest decode rate; a fixed timeout still wins. A timeout is not retried."""
    from rlm_local.engines import openai_http

    srv, url = flaky
    with OpenAIEngine("m", base_url=f"{url}/slowgen/v1") as engine:
        assert (
            engine._limit({"max_tokens": 512}, None)
            == openai_http.AUTO_TIMEOUT_BASE + 512 / openai_http.MIN_DECODE_RATE
        )
        assert 9 < engine._limit({"max_tokens": 512}, time.monotonic() + 10) <= 10
    with OpenAIEngine("m", base_url=f"{url}/slowgen/v1", timeout=7) as engine:
        assert engine._limit({"max_tokens": 512}, time.monotonic() + 100) == 7
    monkeypatch.setattr(openai_http, "AUTO_TIMEOUT_BASE", 0.3)
    monkeypatch.setattr(openai_http, "MIN_DECODE_RATE", 1e9)
    before = srv.hits.get("slowgen", 0)
    with OpenAIEngine("m", base_url=f"{url}/slowgen/v1", max_retries=2, **FAST) as engine:
        (short,) = engine.generate([Request.completion("hi", max_tokens=8)])  # sized: 0.3 s, too short
        (long,) = engine.generate([Request.completion("hi", max_tokens=8)], deadline=time.monotonic() + 5)
    assert not short.ok and "timed out after 0.3s" in short.error
    assert long.ok and long.text == "fine"  # the deadline, not a fixed timeout, bounded it
    assert srv.hits["slowgen"] - before == 2  # the timed-out request was not sent again


def test_server_down_is_a_clear_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    started = time.monotonic()
    result = one(f"http://127.0.0.1:{port}", max_retries=2)
    assert time.monotonic() - started < 5
    assert result.error.startswith(f"openai: cannot connect to http://127.0.0.1:{port}/v1 (is the server running?)")
    assert result.error.endswith("after 3 attempts")


def test_down_server_is_skipped_when_another_is_up(flaky):
    _, url = flaky
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    with OpenAIEngine("m", base_url=[dead, f"{url}/slow/v1"], max_retries=1, **FAST) as engine:
        results = engine.generate([Request.completion(f"prompt {i}") for i in range(6)])
    assert all(r.ok for r in results)


def test_cached_tokens_known_unknown_and_estimated_usage(flaky):
    _, url = flaky
    assert one(f"{url}/cached/v1").usage.cached_tokens == 7
    assert one(f"{url}/nullcached/v1").usage.cached_tokens is None
    plain = one(f"{url}/slow/v1")
    assert plain.usage.cached_tokens is None and plain.usage.prompt_tokens == 11 and plain.usage.completion_tokens == 2
    estimated = one(f"{url}/nousage/v1")  # no usage at all: estimate rather than claim zero
    assert estimated.usage.completion_tokens == 2 and estimated.usage.prompt_tokens >= 1


def test_concurrency_is_bounded_and_real(flaky):
    srv, url = flaky
    srv.max_active["slow"] = 0
    with OpenAIEngine("m", base_url=f"{url}/slow/v1", max_concurrency=3) as engine:
        results = engine.generate([Request.completion(str(i)) for i in range(9)])
    assert all(r.ok for r in results)
    assert 2 <= srv.max_active["slow"] <= 3


def test_api_key_is_sent_but_never_shown(flaky, monkeypatch):
    srv, url = flaky
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    with OpenAIEngine("m", base_url=f"{url}/e400/v1", max_retries=0) as engine:
        (result,) = engine.generate([Request.completion("x")])
        assert srv.auth[-1] == "Bearer sk-from-env"
        assert "sk-from-env" not in repr(engine) and "sk-from-env" not in result.error
    with OpenAIEngine("m", base_url=f"{url}/slow/v1", api_key="sk-explicit") as engine:
        engine.generate([Request.completion("x")])
    assert srv.auth[-1] == "Bearer sk-explicit"


def test_closed_engine_fails_requests():
    engine = OpenAIEngine("m", base_url="http://127.0.0.1:9")
    engine.close()
    engine.close()  # twice is fine
    (result,) = engine.generate([Request.completion("x")])
    assert result.error == "openai: engine is closed"


def test_rlm_loop_over_the_openai_backend():
    """The whole path: RLM loop -> scheduler -> openai engine -> HTTP -> our server -> an engine."""
    from rlm_local import RLM

    def reply(req: Request) -> str:
        if req.messages and req.messages[0]["role"] == "system":  # the root: fan out, then answer
            return (
                "```repl\nanswers = llm_query_batched([f'Q{i} ' + context[:5] for i in range(4)])\n"
                "FINAL(' | '.join(answers))\n```\n"
            )
        return "ans-" + req.messages[-1]["content"]

    served = ScriptedEngine(reply, model_name="served")
    with BackgroundServer(create_app(served)) as url:
        result = RLM(backend="openai", backend_kwargs={"base_url": url, "model_name": None}).completion("hello world")
    assert result.response == "ans-Q0 hello | ans-Q1 hello | ans-Q2 hello | ans-Q3 hello"
    assert result.usage_summary.total.calls == 5 and result.usage_summary.total.cached_tokens == 0
    assert set(result.usage_summary.by_model) == {"served"}


@pytest.mark.model
def test_embedded_model_through_our_server():
    """The real thing end to end: the embedded model served by service/bare.py, queried by the openai engine."""
    hf = pytest.importorskip("rlm_local.engines.hf", reason="the transformers engine is not written yet")
    try:
        model = hf.TransformersEngine(model_name=None)
    except Exception as exc:  # no cached/convertible model on this machine
        pytest.skip(f"embedded model unavailable: {type(exc).__name__}: {exc}")
    try:
        with BackgroundServer(create_app(model)) as url:
            with OpenAIEngine(base_url=url, timeout=120) as engine:
                (result,) = engine.generate([Request.completion("The capital of France is", max_tokens=4)])
    finally:
        model.close()
    assert result.ok, result.error
    assert result.text.strip() and result.usage.prompt_tokens >= 4 and 1 <= result.usage.completion_tokens <= 4
