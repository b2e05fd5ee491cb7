"""One engine, many users: RLMs share the engine's scheduler (so they batch together), run concurrently
without two threads in the engine, close only what they created; and a time budget over the openai engine
drops the slow HTTP request at the deadline instead of waiting for the server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from scripting import repl

from rlm_local import RLM
from rlm_local.engines import Request
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.scheduling import registry as schedulers

DOC = "the code word is heron\n" * 20


class Watched(ScriptedEngine):
    """A scripted engine that records how many threads are inside generate() at once."""

    def __init__(self, replies) -> None:
        super().__init__(replies)
        self.inside = 0
        self.most_inside = 0
        self.closed = False
        self._count = threading.Lock()

    def generate(self, requests, deadline=None):
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            time.sleep(0.01)
            return super().generate(requests, deadline)
        finally:
            with self._count:
                self.inside -= 1

    def close(self) -> None:
        self.closed = True


def echo_question(req: Request) -> str:
    if req.messages[0]["role"] != "system":
        return "sub"
    first = req.messages[1]["content"]
    question = first.split("QUESTION: ", 1)[1].split("\n", 1)[0]
    last = [m for m in req.messages if m["role"] == "user"][-1]["content"]
    if "Output of your code" in last:
        return f"FINAL({question} done)"
    return repl("print(llm_query_batched(['a', 'b']))")


def test_concurrent_completions_on_one_engine_share_its_scheduler():
    engine = Watched(echo_question)
    rlms = [RLM(backend="scripted", engine=engine) for _ in range(4)]
    assert len({id(r.settings.root.scheduler) for r in rlms}) == 1
    assert schedulers.users(engine) == 4
    answers: dict[int, str] = {}

    def work(i: int) -> None:
        answers[i] = rlms[i].completion(DOC, f"question {i}").response

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == {i: f"question {i} done" for i in range(4)}
    assert engine.most_inside == 1  # the engine never saw two threads at once
    scheduler = rlms[0].settings.root.scheduler
    for r in rlms:
        r.close()
    assert schedulers.users(engine) == 0
    assert not scheduler.submit([Request.completion("x")])[0].ok  # the last user closed it
    assert not engine.closed  # an engine the caller passed in is never closed by RLM


def test_an_rlm_closes_the_engine_it_created(monkeypatch):
    rlm = RLM(backend="scripted", backend_kwargs={"replies": ["FINAL(x)"]})
    closed = []
    monkeypatch.setattr(rlm.engine, "close", lambda: closed.append(True))
    rlm.close()
    rlm.close()
    assert closed == [True]


class SlowServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint: the closing request (with STOP) answers at once, every other
    request takes ``slow`` seconds; arrivals and dropped connections are recorded on the server."""

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        last = body["messages"][-1]["content"]
        server = self.server
        server.arrivals.append((time.monotonic(), "STOP" in last))
        if "STOP" not in last:
            time.sleep(server.slow)
        text = "FINAL(late)" if "STOP" in last else "```repl\nprint(1)\n```"
        data = json.dumps(
            {
                "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 3},
            }
        ).encode()
        try:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            server.dropped += 1


def test_a_timed_out_http_call_is_dropped_at_the_deadline():
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowServer)
    server.arrivals, server.dropped, server.slow = [], 0, 6.0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        started = time.monotonic()
        rlm = RLM(
            backend="openai", backend_kwargs={"base_url": url, "model_name": "m"}, max_timeout=1.5, raise_on_limit=False
        )
        result = rlm.completion(DOC, "q")
        returned = time.monotonic() - started
        rlm.close()
        closed = time.monotonic() - started - returned
    finally:
        server.shutdown()
    print(f"returned after {returned:.2f} s (max_timeout 1.5), close() took {closed:.2f} s")
    assert result.stopped_reason == "max_timeout" and result.response == "late"
    assert returned <= 1.5 + 2.0 and closed < 1.0
    stop_arrival = [t for t, stop in server.arrivals if stop][0]
    assert stop_arrival - started <= 1.5 + 1.0  # the closing request was not queued behind the slow one
    assert result.usage_summary.by_role["root"].calls == 2  # the dropped call is counted too


def test_a_failed_rlm_does_not_release_another_ones_scheduler():
    engine = ScriptedEngine(["FINAL(x)"])
    first = RLM(backend="scripted", engine=engine)
    try:
        RLM(backend="scripted", engine=engine, other_backends=["no-such-backend"])
    except Exception:
        pass
    assert schedulers.users(engine) == 1
    assert first.completion(DOC, "q").response == "x"
    first.close()
    assert schedulers.users(engine) == 0
