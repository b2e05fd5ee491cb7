"""The RLM service over real HTTP (uvicorn on 127.0.0.1), spoken to with the openai SDK and httpx."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest

pytest.importorskip("sse_starlette", reason="the service needs the [server] extra")
openai = pytest.importorskip("openai")

from service_support import make_config, serving  # noqa: E402


@pytest.fixture(scope="module")
def server(served_rlm):
    return served_rlm


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_rlm_model_answers_with_rlm_usage(client):
    doc = "boring text " * 50 + "TOKEN-alpha"
    r = client.chat.completions.create(
        model="scripted-rlm",
        messages=[{"role": "user", "content": doc}, {"role": "user", "content": "what is the token?"}],
    )
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.startswith("sub:echo ") and "TOKEN-alpha" in r.choices[0].message.content
    assert r.model == "scripted-rlm" and r.choices[0].finish_reason == "stop"
    detail = r.usage.model_extra["rlm"]
    assert detail["sub_calls"] == 1 and detail["depth"] == 1 and detail["iterations"] == 1
    assert detail["root"]["calls"] == 1 and detail["sub"]["calls"] == 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.model_extra["rlm"]["viewer"] == f"/runs/{r.model_extra['rlm']['run_id']}"


def test_models_lists_rlm_and_bare(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["scripted-model", "scripted-rlm", "deep-rlm"]  # the bare model first, as before RLMs


def test_bare_model_still_answers(client):
    r = client.chat.completions.create(model="scripted-model", messages=[{"role": "user", "content": "hello"}])
    assert r.choices[0].message.content == "sub:hello"
    assert not (r.model_extra or {}).get("rlm")
    c = client.completions.create(model="scripted-model", prompt=["one", "two"], max_tokens=5)
    assert [x.text for x in c.choices] == ["sub:one", "sub:two"] and c.usage.total_tokens > 0
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="scripted-rlm", prompt="an RLM answers chat completions")


def test_child_runs_count_depth(client):
    r = client.chat.completions.create(
        model="deep-rlm", messages=[{"role": "user", "content": "ctx"}, {"role": "user", "content": "!child please"}]
    )
    assert r.usage.model_extra["rlm"]["depth"] == 2  # the child at depth 1 made sub-calls at depth 2
    assert r.choices[0].message.content  # the child's answer


def test_bad_input_is_4xx_in_openai_shape(server, client):
    url = server[0]
    with httpx.Client(base_url=url, timeout=10) as http:
        bad = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400
        err = bad.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and "\n" not in err["message"]
        assert err["param"] is None and "not valid JSON" in err["message"]  # before: param "1" (a position)
        assert http.post("/v1/chat/completions", json={"model": "scripted-rlm", "messages": []}).status_code == 400
        assert (
            http.post(
                "/v1/chat/completions", json={"model": "scripted-rlm", "messages": [{"role": "user", "content": "   "}]}
            ).status_code
            == 400
        )
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="scripted-rlm",
            messages=[{"role": "user", "content": "q"}],
            extra_body={"rlm": {"session": "sess_00000000000000000000"}},
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="scripted-rlm",
            messages=[{"role": "user", "content": "q"}],
            extra_body={"rlm": {"file_ids": ["file-000000000000000000000000"]}},
        )
    with httpx.Client(base_url=url, timeout=10) as http:  # JSON can carry lone surrogates: not text
        r = http.post(
            "/v1/chat/completions",
            headers={"content-type": "application/json"},
            content=b'{"model": "scripted-rlm", "messages": [{"role": "user", "content": "a \\ud800"}]}',
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content"
        r = http.post(
            "/v1/chat/completions",
            headers={"content-type": "application/json"},
            content=b'{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}',
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
    # and the server still serves
    assert client.chat.completions.create(model="scripted-model", messages=[{"role": "user", "content": "ok"}])


def test_sixteen_concurrent_runs_no_cross_talk(client, server):
    def ask(i: int) -> tuple[int, str, str]:
        r = client.chat.completions.create(
            model="scripted-rlm",
            messages=[
                {"role": "user", "content": f"document number {i} ends with UNIQUE-{i:02d}"},
                {"role": "user", "content": "which number?"},
            ],
        )
        return i, r.choices[0].message.content, r.model_extra["rlm"]["run_id"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, range(16)))
    assert len({run for _, _, run in results}) == 16
    for i, answer, _ in results:
        assert f"UNIQUE-{i:02d}" in answer, (i, answer)
        assert all(f"UNIQUE-{j:02d}" not in answer for j in range(16) if j != i)


def test_named_context_and_uploaded_files(tmp_path):
    doc = tmp_path / "handbook.md"
    doc.write_text("# Handbook\n" + "rules " * 20 + "NAMED-CONTEXT-END", encoding="utf-8")
    config = make_config(tmp_path / "data")
    config.contexts = {"handbook": doc}
    with serving(config) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(
            model="scripted-rlm",
            messages=[{"role": "user", "content": "q"}],
            extra_body={"rlm": {"context": "handbook"}},
        )
        assert "NAMED-CONTEXT-END" in r.choices[0].message.content
        f = client.files.create(file=("notes.txt", b"some notes FILE-END"), purpose="assistants")
        r = client.chat.completions.create(
            model="scripted-rlm", messages=[{"role": "user", "content": "q"}], extra_body={"rlm": {"file_ids": [f.id]}}
        )
        assert "FILE-END" in r.choices[0].message.content


def test_overhead_script_runs(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "scripts" / "service_overhead.py"
    spec = importlib.util.spec_from_file_location("service_overhead", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--runs", "2", "--out", str(tmp_path / "o.json")]) == 0
    data = json.loads((tmp_path / "o.json").read_text())
    assert set(data["paths"]) == {"in-process completion()", "server, non-streaming", "server, streaming"}
    assert "overhead ms" in capsys.readouterr().out


def root_context_type(engine, before: int) -> str:
    """What the root was told `context` is, in the first root request since ``before``."""
    first = next(r for r in engine.requests[before:] if r.messages and r.messages[0]["role"] == "system")
    return first.messages[1]["content"].split("- type: ")[1].split("\n")[0]


def test_one_document_is_a_str_however_it_is_given(server, client):
    """As on the CLI: one document (a file, a session's, an earlier message) is a str `context`; several are
    a list. Before, every way gave a list, and the model's context.split(...) failed."""
    url, service = server
    engine = service.config.rlms["scripted-rlm"].engine
    f = client.files.create(file=("one.txt", b"the only document ONE-DOC"), purpose="assistants")
    g = client.files.create(file=("two.txt", b"a second document TWO-DOC"), purpose="assistants")
    session = httpx.post(url + "/v1/sessions", json={"model": "scripted-rlm", "file_ids": [f.id]}).json()["id"]
    ways = {
        "file_ids": ({"file_ids": [f.id]}, [{"role": "user", "content": "!look 1"}]),
        "session": ({"session": session}, [{"role": "user", "content": "!look 2"}]),
        "messages": (
            None,
            [{"role": "user", "content": "the only document ONE-DOC"}, {"role": "user", "content": "!look"}],
        ),
    }
    for way, (rlm, messages) in ways.items():
        before = len(engine.requests)
        r = client.chat.completions.create(
            model="scripted-rlm", messages=messages, extra_body={"rlm": rlm} if rlm else None
        )
        assert root_context_type(engine, before) == "str (one document)", way
        tree = httpx.get(f"{url}/v1/runs/{r.model_extra['rlm']['run_id']}/tree").json()
        assert tree["run"]["context"]["type"] == "str", way
        cell = next(e for e in service.runs.get("local", r.model_extra["rlm"]["run_id"]).events if e["event"] == "cell")
        assert cell["stdout"].strip() == str(len("the only document ONE-DOC")), way  # len(str(context)) of the str
    before = len(engine.requests)
    client.chat.completions.create(
        model="scripted-rlm",
        messages=[{"role": "user", "content": "q"}],
        extra_body={"rlm": {"file_ids": [f.id, g.id]}},
    )
    assert root_context_type(engine, before).startswith("list of 2 str")


def test_tools_are_refused_not_ignored(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="scripted-rlm",
            messages=[{"role": "user", "content": "q"}],
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        )
    assert exc.value.body["param"] == "tools" and "not supported" in exc.value.body["message"]


def test_file_content_and_utf16_uploads(client):
    for name, data in [
        ("bom16.txt", "\ufeffUTF-16 text with a mark: é".encode("utf-16-le")),
        ("plain16.txt", "UTF-16 text without a mark".encode("utf-16-le")),
        ("big16.txt", "Big-endian UTF-16".encode("utf-16-be")),
    ]:
        f = client.files.create(file=(name, data), purpose="assistants")
        assert f.model_extra["text_chars"] > 10, name
        assert client.files.content(f.id).read() == data  # GET /v1/files/{id}/content: the bytes as uploaded
        r = client.chat.completions.create(
            model="scripted-rlm", messages=[{"role": "user", "content": "q"}], extra_body={"rlm": {"file_ids": [f.id]}}
        )
        assert "UTF-16" in r.choices[0].message.content or "endian" in r.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-000000000000000000000000")


def test_metrics_count_requests_by_status_refusals_and_active_runs(server, client):
    url, _ = server
    httpx.get(url + "/v1/files/file-000000000000000000000000")  # a 404
    text = httpx.get(url + "/metrics").text
    assert 'rlm_http_requests_total{method="GET",route="/v1/files/{file_id}",status="404"}' in text
    assert "rlm_runs_active " in text and "# TYPE rlm_runs_rejected_total counter" in text
