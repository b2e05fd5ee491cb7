"""Files and sessions over HTTP: uploads (text, markdown, PDF, zip) stored whole with a checksum, bad uploads
refused with nothing stored, sessions whose REPL variables survive between questions, added contexts, a
server restart and the idle TTL."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile

import httpx
import pytest

pytest.importorskip("sse_starlette", reason="the service needs the [server] extra")
openai = pytest.importorskip("openai")

from pdfs import make_pdf  # noqa: E402
from service_support import make_config, serving  # noqa: E402


@pytest.fixture
def server(tmp_path):
    config = make_config(tmp_path / "data", max_upload_bytes=64 * 1024)
    with serving(config) as (url, service):
        yield url, service, config


def test_uploads_of_each_kind_are_stored_with_a_checksum(server):
    url, service, config = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    pdf = make_pdf("The PDF says PDF-FACT-42")
    f = client.files.create(file=("report.pdf", pdf), purpose="assistants")
    assert f.filename == "report.pdf" and f.bytes == len(pdf)
    meta = client.files.retrieve(f.id).model_extra
    assert meta["sha256"] == hashlib.sha256(pdf).hexdigest()
    stored = list(config.data_dir.glob(f"files/*/{f.id}"))[0]
    assert (stored / "original").read_bytes() == pdf
    assert "PDF-FACT-42" in (stored / "text.txt").read_text()

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("repo/README.md", "# Read me ZIP-README")
        z.writestr("repo/src/main.py", "print('ZIP-CODE')")
        z.writestr("repo/logo.png", b"\x89PNG\x00\x00binary")
        z.writestr("repo/.git/config", "hidden")
    zf = client.files.create(file=("repo.zip", buf.getvalue()), purpose="assistants")
    text = (list(config.data_dir.glob(f"files/*/{zf.id}"))[0] / "text.txt").read_text()
    assert "=== FILE: repo/README.md ===" in text and "ZIP-CODE" in text
    assert "PNG" not in text and "hidden" not in text
    md = client.files.create(file=("notes.md", b"# Notes\nMD-FACT"), purpose="assistants")
    assert {x.id for x in client.files.list().data} >= {f.id, zf.id, md.id}
    r = client.chat.completions.create(
        model="scripted-rlm",
        messages=[{"role": "user", "content": "q"}],
        extra_body={"rlm": {"file_ids": [md.id, f.id]}},
    )
    assert "PDF-FACT-42" in r.choices[0].message.content  # the last document's end
    assert client.files.delete(md.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(md.id)


def test_bad_uploads_are_refused_and_nothing_is_stored(server):
    url, service, config = server
    with httpx.Client(base_url=url, timeout=10) as http:
        cases = [
            ("big.txt", b"a" * (64 * 1024 + 1), 413),
            ("blob.bin", b"\x00\x01\x02" * 10, 400),
            ("data.txt", b"abc\x00def", 400),
            ("empty.txt", b"   ", 400),
            ("bad.pdf", b"%PDF-1.4 garbage", 400),
            ("bad.zip", b"PK\x03\x04garbage", 400),
        ]
        for name, data, status in cases:
            r = http.post("/v1/files", files={"file": (name, data)}, data={"purpose": "assistants"})
            assert r.status_code == status, (name, r.text)
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert http.post("/v1/files", data={"purpose": "x"}).status_code == 400  # no file at all
        huge = http.post("/v1/files", files={"file": ("huge.txt", b"a" * (1024 * 1024))})  # refused unread
        assert huge.status_code == 413 and "over the limit" in huge.json()["error"]["message"]
        assert http.get("/v1/files").json()["data"] == []
    leftovers = [p for p in (config.data_dir / "files").rglob("*") if p.is_file()]
    assert leftovers == []


def ask(client, session: str, question: str) -> str:
    r = client.chat.completions.create(
        model="scripted-rlm", messages=[{"role": "user", "content": question}], extra_body={"rlm": {"session": session}}
    )
    return r.choices[0].message.content


def test_session_keeps_variables_history_contexts_and_survives_a_restart(tmp_path):
    config = make_config(tmp_path / "data")
    with serving(config) as (url, service):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        f = client.files.create(file=("a.txt", b"first document"), purpose="assistants")
        with httpx.Client(base_url=url, timeout=30) as http:
            s = http.post("/v1/sessions", json={"model": "scripted-rlm", "file_ids": [f.id]}).json()
            assert s["contexts"][0]["name"] == "context_0"
            # one document is a str, as on the CLI: len(context) is its length
            assert ask(client, s["id"], "!remember this") == "kept-14"
            assert ask(client, s["id"], "!recall it") == "kept-14 14"  # the variable survived between questions
            pid = service.sessions.get("local", s["id"]).sandbox.pid
            added = http.post(f"/v1/sessions/{s['id']}/contexts", json={"contexts": ["second document"]}).json()
            assert [c["name"] for c in added["contexts"]] == ["context_0", "context_1"]
            assert ask(client, s["id"], "!recall again") == "kept-14 2"  # two documents: a list, memo kept
            assert service.sessions.get("local", s["id"]).sandbox.pid == pid  # the same REPL, contexts added
            got = http.get(f"/v1/sessions/{s['id']}").json()
            assert [h["answer"] for h in got["history"]] == ["kept-14", "kept-14 14", "kept-14 2"]
            assert got["repl"]["live"] and "memo" in got["repl"]["variables"]
            # the next root model sees the session's earlier questions
            engine = config.rlms["scripted-rlm"].engine
            assert "Q: !remember this" in engine.requests[-2].messages[1]["content"]
            ask_r = http.post(f"/v1/sessions/{s['id']}/ask", json={"question": "!recall via ask"})
            assert ask_r.json()["choices"][0]["message"]["content"] == "kept-14 2"
    with serving(make_config(tmp_path / "data")) as (url, service):  # a new server on the same data
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        with httpx.Client(base_url=url, timeout=30) as http:
            got = http.get(f"/v1/sessions/{s['id']}").json()
            assert got["restored_after_restart"] and not got["repl"]["live"] and len(got["history"]) == 4
            assert ask(client, s["id"], "!recall after restart") == "kept-14 2"
            assert http.delete(f"/v1/sessions/{s['id']}").json()["deleted"]
            assert http.get(f"/v1/sessions/{s['id']}").status_code == 404


def test_idle_sessions_expire(tmp_path):
    with serving(make_config(tmp_path / "data", session_ttl=0.5)) as (url, service):
        with httpx.Client(base_url=url, timeout=30) as http:
            s = http.post("/v1/sessions", json={"model": "scripted-rlm", "contexts": ["doc"]}).json()
            assert http.get(f"/v1/sessions/{s['id']}").status_code == 200
            deadline = time.monotonic() + 10
            while http.get(f"/v1/sessions/{s['id']}").status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            r = http.get(f"/v1/sessions/{s['id']}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
        assert not list((tmp_path / "data" / "sessions").glob("*/*.json"))


def test_session_errors(server):
    url, _, _ = server
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/v1/sessions", json={"model": "nope"}).status_code == 404
        assert http.post("/v1/sessions", json={"model": "scripted-rlm", "file_ids": ["file-x"]}).status_code == 404
        assert http.post("/v1/sessions/sess_00000000000000000000/ask", json={"question": "q"}).status_code == 404
        s = http.post("/v1/sessions", json={"model": "scripted-rlm"}).json()
        r = http.post(f"/v1/sessions/{s['id']}/ask", json={"question": "q"})
        assert r.status_code == 400 and "no contexts" in r.json()["error"]["message"]


def test_a_busy_session_refuses_a_second_question_and_deletion(server):
    import json as _json

    import service_support

    url, service, _ = server
    service_support.RELEASE.clear()
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            s = http.post("/v1/sessions", json={"model": "scripted-rlm", "contexts": ["doc"]}).json()
            with http.stream(
                "POST",
                "/v1/chat/completions",
                json={
                    "model": "scripted-rlm",
                    "stream": True,
                    "messages": [{"role": "user", "content": "!slow q"}],
                    "rlm": {"session": s["id"]},
                },
            ) as r:
                lines = r.iter_lines()
                run_id = next(_json.loads(x[6:])["rlm"]["run_id"] for x in lines if x.startswith("data: {"))
                again = http.post(f"/v1/sessions/{s['id']}/ask", json={"question": "another"})
                assert again.status_code == 409 and again.json()["error"]["code"] == "session_busy"
                assert http.delete(f"/v1/sessions/{s['id']}").status_code == 409
                assert http.post(f"/v1/runs/{run_id}/cancel").json()["cancelled"] is True
                assert [x for x in lines if x.startswith("data: ")][-1] == "data: [DONE]"
            got = http.get(f"/v1/sessions/{s['id']}").json()
            assert got["history"] == []  # a cancelled question leaves no answer in the history
            assert http.delete(f"/v1/sessions/{s['id']}").json()["deleted"]
    finally:
        service_support.RELEASE.set()
