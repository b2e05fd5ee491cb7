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
