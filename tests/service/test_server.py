"""rlm_local.service.bare: the service in bare mode (one engine, no RLMs) under real uvicorn on loopback, spoken
to with plain httpx: the same request models and error shapes as the RLM service, 4xx for the caller's
mistakes, 502 when the engine fails."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi", reason="the server needs the [server] extra (fastapi, uvicorn)")

from rlm_local.engines.base import Engine, Request, Result, Usage  # noqa: E402
from rlm_local.engines.scripted import ScriptedEngine  # noqa: E402
from rlm_local.service.bare import create_app
from rlm_local.testing import BackgroundServer  # noqa: E402


def reply(request: Request) -> str:
    text = request.prompt if request.prompt is not None else request.messages[-1]["content"]
    if "FAIL" in text:
        raise RuntimeError("asked to fail")
    return f"echo {text}"


@pytest.fixture(scope="module")
def scripted():
    engine = ScriptedEngine(reply, model_name="scripted-model")
    with BackgroundServer(create_app(engine)) as url, httpx.Client(base_url=url, timeout=10) as http:
        yield engine, http


def test_health_and_models(scripted):
    _, http = scripted
    assert http.get("/health").json() == {
        "status": "ok",
        "models": ["scripted-model"],
        "runs_active": 0,
        "model": "scripted-model",
        "backend": "scripted",
    }
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["scripted-model"]


def test_completion_single_and_list(scripted):
    engine, http = scripted
    r = http.post("/v1/completions", json={"model": "x", "prompt": "hello", "max_tokens": 5, "stop": "\n"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "text_completion" and data["model"] == "scripted-model"
    assert data["choices"][0]["text"] == "echo hello"
    seen = engine.requests[-1]
    assert seen.prompt == "hello" and seen.sampling.max_tokens == 5 and seen.sampling.stop == ("\n",)
    assert seen.sampling.temperature == 1.0  # the OpenAI default when the client sends none

    r = http.post("/v1/completions", json={"prompt": ["a", "b", "c"], "temperature": 0})
    data = r.json()
    assert [c["text"] for c in data["choices"]] == ["echo a", "echo b", "echo c"]
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert data["usage"]["prompt_tokens"] == 3 and data["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert engine.requests[-1].sampling.max_tokens == 16 and engine.requests[-1].sampling.greedy


def test_chat_completion(scripted):
    engine, http = scripted
    body = {
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
        ],
        "max_tokens": 7,
        "seed": 3,
    }
    data = http.post("/v1/chat/completions", json=body).json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "echo hi there"}
    assert data["choices"][0]["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    seen = engine.requests[-1]
    assert seen.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"})
    assert seen.sampling.seed == 3 and seen.sampling.max_tokens == 7


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/completions", {"prompt": "x", "stream": True}, "stream"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True}, "stream"),
        ("/v1/completions", {"prompt": [1, 2, 3]}, "prompt"),
        ("/v1/completions", {}, "prompt"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"prompt": "x", "n": 2}, "n"),
        ("/v1/completions", {"prompt": "x", "stop": [1]}, "stop"),
        ("/v1/completions", {"prompt": "x", "logprobs": 3}, "logprobs"),
        ("/v1/completions", {"prompt": "x", "echo": True}, "echo"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "tools",
        ),
        (  # llama.cpp's server answers this with 400 too; the old hand-written server answered 500
            "/v1/chat/completions",
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "a"},
                    {"role": "assistant", "content": "b"},
                ]
            },
            "messages",
        ),
    ],
)
def test_bad_requests_are_400_with_one_line(scripted, path, body, param):
    engine, http = scripted
    before = len(engine.requests)
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and "\n" not in error["message"] and error["message"].startswith(param)
    assert len(engine.requests) == before  # refused before the engine saw it


def test_invalid_json_body_is_400(scripted):
    _, http = scripted
    r = http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    error = r.json()["error"]
    assert r.status_code == 400 and "not valid JSON" in error["message"] and error["param"] is None


def test_engine_error_is_502_with_message(scripted):
    _, http = scripted
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "please FAIL"}]})
    assert r.status_code == 502 and r.json()["error"]["code"] == "engine_error"
    assert "asked to fail" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json={"prompt": ["ok", "FAIL now"]})
    assert r.status_code == 502 and "prompt 1: " in r.json()["error"]["message"]


def test_engine_that_cannot_serve_is_503():
    engine = ScriptedEngine(reply)
    scheduler = scheduler_module().Scheduler(engine)
    scheduler.close()  # a closed scheduler refuses work: the model cannot serve
    with BackgroundServer(create_app(engine, scheduler=scheduler)) as url:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text


def scheduler_module():
    import rlm_local.scheduling.scheduler as module

    return module


class UnknownCacheEngine(Engine):
    """Reports cached tokens as unknown, like servers whose usage has no prompt_tokens_details."""

    backend = "test"
    model_name = "unknown-cache"

    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0

    def generate(self, requests: list[Request]) -> list[Result]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        time.sleep(0.02)
        self.active -= 1
        return [
            Result(text="ok", usage=Usage(calls=1, prompt_tokens=4, cached_tokens=None, completion_tokens=1))
            for _ in requests
        ]


def test_unknown_cached_tokens_are_null_and_engine_is_serialised():
    engine = UnknownCacheEngine()
    with BackgroundServer(create_app(engine)) as url:

        def call(results: list) -> None:
            results.append(httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=10).json())

        results: list = []
        threads = [threading.Thread(target=call, args=(results,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 6
    assert all(r["usage"]["prompt_tokens_details"] == {"cached_tokens": None} for r in results)
    assert engine.max_active == 1  # no scheduler: the engine is called under a lock


class RecordingScheduler:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls: list[tuple[int, str]] = []

    def submit(self, requests: list[Request], run_id: str) -> list[Result]:
        self.calls.append((len(requests), run_id))
        return self.engine.generate(requests)


def test_requests_go_through_the_scheduler_with_run_ids():
    engine = ScriptedEngine(reply)
    scheduler = RecordingScheduler(engine)
    with BackgroundServer(create_app(engine, scheduler=scheduler, model_name="served")) as url:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": ["a", "b"], "user": "run-7"}, timeout=10)
        assert r.json()["model"] == "served"
        httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "c"}]},
            headers={"X-RLM-Run-Id": "hdr"},
            timeout=10,
        )
    assert scheduler.calls == [(2, "run-7"), (1, "hdr")]


def test_real_scheduler_when_present():
    scheduler_mod = pytest.importorskip(
        "rlm_local.scheduling.scheduler", reason="rlm_local.scheduling.scheduler not written yet"
    )
    engine = ScriptedEngine(reply)
    scheduler = scheduler_mod.Scheduler(engine)
    try:
        with BackgroundServer(create_app(engine, scheduler=scheduler)) as url:
            r = httpx.post(f"{url}/v1/completions", json={"prompt": ["a", "b", "c"], "temperature": 0}, timeout=20)
        assert [c["text"] for c in r.json()["choices"]] == ["echo a", "echo b", "echo c"]
    finally:
        close = getattr(scheduler, "close", None)
        if close:
            close()


def test_official_openai_client_can_talk_to_it(scripted):
    openai = pytest.importorskip("openai", reason="the openai package is not installed")
    _, http = scripted
    client = openai.OpenAI(base_url=str(http.base_url).rstrip("/") + "/v1", api_key="unused", max_retries=0, timeout=10)
    chat = client.chat.completions.create(model="scripted-model", messages=[{"role": "user", "content": "hey"}])
    assert chat.choices[0].message.content == "echo hey" and chat.usage.prompt_tokens_details.cached_tokens == 0
    completion = client.completions.create(model="scripted-model", prompt="yo", max_tokens=3)
    assert completion.choices[0].text == "echo yo"
    with pytest.raises(openai.BadRequestError, match="stream=true is not supported"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
