"""Streaming RLM runs: progress events, then the answer as content deltas, and a client that goes away
cancelling its run and the run's queued sub-calls."""

from __future__ import annotations

import json
import time

import httpx
import pytest

pytest.importorskip("sse_starlette", reason="the service needs the [server] extra")
openai = pytest.importorskip("openai")

import service_support  # noqa: E402


@pytest.fixture(scope="module")
def server(served_rlm):
    return served_rlm


def test_stream_with_the_openai_sdk(server):
    client = openai.OpenAI(base_url=server[0] + "/v1", api_key="x", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="scripted-rlm",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "a document STREAM-END"}, {"role": "user", "content": "!look first"}],
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    run_id = chunks[0].model_extra["rlm"]["run_id"]
    events = [c.model_extra["rlm_event"] for c in chunks if (c.model_extra or {}).get("rlm_event")]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "final"
    assert kinds.count("root_turn") == 2 and "cell" in kinds
    assert all(e["run_id"] == run_id for e in events)
    assert all("STREAM-END" not in json.dumps(e) for e in events if e["event"] != "cell")  # no context in events
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "second turn"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_extra["rlm"]["iterations"] == 2


def test_long_answer_arrives_in_deltas(server):
    client = openai.OpenAI(base_url=server[0] + "/v1", api_key="x", max_retries=0)
    doc = "x" * 100 + "LONG" * 40
    chunks = list(
        client.chat.completions.create(
            model="scripted-rlm",
            stream=True,
            messages=[{"role": "user", "content": doc}, {"role": "user", "content": "echo"}],
        )
    )
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 1 and "".join(deltas).startswith("sub:echo ")


def test_disconnect_cancels_the_run_and_its_queued_subcalls(server):
    url, service = server
    service_support.RELEASE.clear()
    engine = service.config.rlms["scripted-rlm"].engine
    before = len(engine.requests)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            with http.stream(
                "POST",
                "/v1/chat/completions",
                json={
                    "model": "scripted-rlm",
                    "stream": True,
                    "messages": [{"role": "user", "content": "doc"}, {"role": "user", "content": "!slow please"}],
                },
            ) as r:
                assert r.status_code == 200
                run_id = None
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        data = json.loads(line[6:])
                        run_id = run_id or data["rlm"]["run_id"] if "rlm" in data else run_id
                        if data.get("rlm_event", {}).get("event") == "root_turn":
                            break  # the cell and its first sub-call start now; the client goes away
        record = service.runs.get("local", run_id)
        assert record.done.wait(15), "the run did not stop after the client disconnected"
        assert record.status == "cancelled" and record.result.stopped_reason == "cancelled"
    finally:
        service_support.RELEASE.set()
    time.sleep(0.5)
    subcalls = [
        r for r in engine.requests[before:] if "slow" in r.messages[-1]["content"] and r.messages[0]["role"] != "system"
    ]
    assert len(subcalls) <= 2, f"{len(subcalls)} of the 50 sub-calls ran after the disconnect"
    assert service.runs.active() == 0


def test_a_non_streaming_client_that_gives_up_cancels_too(server):
    url, service = server
    service_support.RELEASE.clear()
    try:
        with httpx.Client(base_url=url, timeout=1.5) as http, pytest.raises(httpx.ReadTimeout):
            http.post(
                "/v1/chat/completions",
                json={
                    "model": "scripted-rlm",
                    "messages": [{"role": "user", "content": "doc two"}, {"role": "user", "content": "!slow again"}],
                },
            )
        deadline = time.monotonic() + 15
        while service.runs.active() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.runs.active() == 0
        latest = service.runs.list("local")[0]
        assert latest["status"] == "cancelled" and latest["stopped_reason"] == "cancelled"
    finally:
        service_support.RELEASE.set()


def test_cancel_before_start():
    from rlm_local import RLM, CancellationError
    from rlm_local.engines.scripted import ScriptedEngine

    with RLM(engine=ScriptedEngine(["FINAL(never)"]), backend="scripted", raise_on_limit=False) as rlm:
        assert rlm.cancel("early") is False
        result = rlm.completion("ctx", "q", run_id="early")
        assert result.stopped_reason == "cancelled" and result.response == ""
    with RLM(engine=ScriptedEngine(["FINAL(never)"]), backend="scripted") as rlm:  # the reference's way
        rlm.cancel("early")
        with pytest.raises(CancellationError):
            rlm.completion("ctx", "q", run_id="early")


def slow_request(stream: bool, tag: str) -> dict:
    return {
        "model": "scripted-rlm",
        "stream": stream,
        "messages": [{"role": "user", "content": f"doc {tag}"}, {"role": "user", "content": f"!slow {tag}"}],
    }


def test_a_cancelled_run_says_cancelled_not_an_empty_answer(server):
    """Before: 200, finish_reason "length" and empty content; the SDK returned it as an answer."""
    url, service = server
    service_support.RELEASE.clear()
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
    try:
        # streaming: the SDK raises on the error event, and the stream still ends with [DONE]
        with httpx.Client(base_url=url, timeout=30) as http:
            with http.stream("POST", "/v1/chat/completions", json=slow_request(True, "s")) as r:
                lines = r.iter_lines()
                run_id = next(json.loads(x[6:])["rlm"]["run_id"] for x in lines if x.startswith("data: {"))
                assert http.post(f"/v1/runs/{run_id}/cancel").json()["cancelled"] is True
                data = [x[6:] for x in lines if x.startswith("data: ")]
            assert data[-1] == "[DONE]" and json.loads(data[-2])["error"]["code"] == "run_cancelled"
            assert http.get(f"/v1/runs/{run_id}").json()["status"] == "cancelled"
        # non-streaming: a 409 the SDK raises, while another client cancels the run
        import threading

        def cancel_soon() -> None:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                going = [m for m in service.runs.list("local") if m["status"] == "running"]
                if going:
                    httpx.post(f"{url}/v1/runs/{going[0]['id']}/cancel")
                    return
                time.sleep(0.05)

        threading.Thread(target=cancel_soon, daemon=True).start()
        with pytest.raises(openai.ConflictError) as exc:
            client.chat.completions.create(**{k: v for k, v in slow_request(False, "n").items() if k != "stream"})
        assert exc.value.body["code"] == "run_cancelled"
    finally:
        service_support.RELEASE.set()


def test_a_stopping_server_ends_open_streams_with_an_error_and_done(tmp_path):
    """Before: the stream just ended (no error, no [DONE]) and the SDK returned an empty answer."""
    from service_support import make_config, serving

    service_support.RELEASE.clear()
    try:
        with serving(make_config(tmp_path / "data")) as (url, service):
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
            stream = client.chat.completions.create(**slow_request(True, "stop"))
            next(iter(stream))  # the run is going
            service.begin_shutdown()  # what SIGINT/SIGTERM does first (tests/service/test_service_cli.py)
            with pytest.raises(openai.APIError) as exc:
                for _ in stream:
                    pass
            assert exc.value.body["code"] == "server_shutdown"
            with pytest.raises(openai.APIStatusError) as refused:  # no new runs while stopping
                client.chat.completions.create(model="scripted-rlm", messages=[{"role": "user", "content": "x"}])
            assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"]
    finally:
        service_support.RELEASE.set()
