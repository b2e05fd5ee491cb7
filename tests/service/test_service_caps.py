"""What one client can make the server hold is capped, and an over-cap request is a clear 4xx that stores
nothing: request bodies announced or chunked, extracted text (a small PDF that draws millions of
characters), the documents of a session or a run together, run records in memory, live REPLs per key
and in all (idle ones closed), and the Host names served (DNS rebinding)."""

from __future__ import annotations

import time

import httpx
import pytest

pytest.importorskip("sse_starlette", reason="the service needs the [server] extra")
openai = pytest.importorskip("openai")

import service_support  # noqa: E402
from pdfs import make_pdf_bomb  # noqa: E402
from service_support import make_config, serving  # noqa: E402

CAP = 64 * 1024


@pytest.fixture
def server(tmp_path):
    config = make_config(tmp_path / "data", max_upload_bytes=CAP, max_extracted_chars=100_000)
    with serving(config) as (url, service):
        yield url, service, config


def chunks(total: int, piece: int = 16 * 1024):
    sent = 0
    while sent < total:
        yield b"a" * min(piece, total - sent)
        sent += piece


def stored_files(config) -> list:
    return [p for p in (config.data_dir / "files").rglob("*") if p.is_file()]


def test_a_chunked_upload_without_length_is_stopped_at_the_cap(server):
    """Before: only an announced Content-Length was checked; a chunked upload was read (spooled) whole,
    64 MB with a 1 MB cap, before the route looked at its size."""
    url, _, config = server
    boundary = "xXxBOUNDARYxXx"
    total, sent = 64 * 1024 * 1024, [0]

    def body():  # multipart by hand, sent chunked: no Content-Length for the cap to read
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        for piece in chunks(total, 256 * 1024):
            sent[0] += len(piece)
            yield piece
        yield f"\r\n--{boundary}--\r\n".encode()

    with httpx.Client(base_url=url, timeout=60) as http:
        try:
            r = http.post(
                "/v1/files", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
            )
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
        except httpx.TransportError:  # the server answered and closed before the client sent it all
            pass
        assert sent[0] < total // 4, f"the server read {sent[0]:,} bytes of a chunked upload over a {CAP:,} cap"
        assert http.get("/v1/files").json()["data"] == []
    assert stored_files(config) == []


def test_a_chunked_json_body_is_stopped_at_the_cap(server):
    url, service, _ = server

    def body():
        yield b'{"model": "scripted-rlm", "contexts": ["'
        yield from chunks(4 * CAP)
        yield b'"]}'

    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/v1/sessions", content=body(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert http.get("/v1/sessions").json()["data"] == []


def test_inline_contexts_count_against_the_character_cap(server):
    url, _, _ = server
    with httpx.Client(base_url=url, timeout=30) as http:
        s = http.post("/v1/sessions", json={"model": "scripted-rlm", "contexts": ["x" * 40_000]}).json()
        ok = http.post(f"/v1/sessions/{s['id']}/contexts", json={"contexts": ["y" * 40_000]})
        assert ok.status_code == 200
        over = http.post(f"/v1/sessions/{s['id']}/contexts", json={"contexts": ["z" * 40_000]})
        assert over.status_code == 413 and "100,000" in over.json()["error"]["message"]
        assert len(http.get(f"/v1/sessions/{s['id']}").json()["contexts"]) == 2  # nothing half-added


def test_a_pdf_that_draws_millions_of_characters_stops_at_the_cap(server):
    url, _, config = server
    bomb = make_pdf_bomb()  # 60**4 draws of a 100-character line from a few kilobytes
    assert len(bomb) < 4096
    with httpx.Client(base_url=url, timeout=120) as http:
        r = http.post("/v1/files", files={"file": ("small.pdf", bomb)}, data={"purpose": "assistants"})
        assert r.status_code == 413, r.text
        assert "more than 100,000 characters" in r.json()["error"]["message"]
    assert stored_files(config) == []


def test_files_of_one_run_are_capped_together(server):
    url, _, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    ids = [client.files.create(file=(f"{i}.txt", b"w" * 40_000), purpose="assistants").id for i in range(3)]
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(
            model="scripted-rlm", messages=[{"role": "user", "content": "q"}], extra_body={"rlm": {"file_ids": ids}}
        )
    assert exc.value.status_code == 413


def test_run_records_in_memory_are_capped_and_older_ones_read_from_disk(tmp_path):
    with serving(make_config(tmp_path / "data", max_run_records=3)) as (url, service):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        ids = []
        for i in range(7):
            r = client.chat.completions.create(
                model="scripted-rlm",
                messages=[{"role": "user", "content": f"doc {i}"}, {"role": "user", "content": "q"}],
            )
            ids.append(r.model_extra["rlm"]["run_id"])
        assert len(service.runs._runs) <= 3
        with httpx.Client(base_url=url, timeout=30) as http:
            oldest = http.get(f"/v1/runs/{ids[0]}").json()
            assert oldest["status"] == "done" and oldest["answer"].startswith("sub:echo")
            assert http.get(f"/v1/runs/{ids[0]}/tree").json()["total"] >= 1
            assert {m["id"] for m in http.get("/v1/runs").json()["data"]} == set(ids)


def ask(client, session: str, question: str) -> str:
    r = client.chat.completions.create(
        model="scripted-rlm", messages=[{"role": "user", "content": question}], extra_body={"rlm": {"session": session}}
    )
    return r.choices[0].message.content


def test_live_repls_per_key_are_capped_and_the_idle_ones_closed_first(tmp_path):
    with serving(make_config(tmp_path / "data", max_live_sessions_per_key=2)) as (url, service):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        with httpx.Client(base_url=url, timeout=30) as http:
            ids = [
                http.post("/v1/sessions", json={"model": "scripted-rlm", "contexts": [f"document {i}"]}).json()["id"]
                for i in range(4)
            ]
        for sid in ids:
            assert ask(client, sid, "!remember") == "kept-10"
        live = [s for s in service.sessions.list("local") if s.sandbox is not None]
        assert len(live) == 2 and {s.id for s in live} == set(ids[2:])  # the least recently used were closed
        assert ask(client, ids[0], "!recall") == "kept-10 10"  # its variables came back in a new REPL
        assert sum(s.sandbox is not None for s in service.sessions.list("local")) == 2


def test_no_live_repl_to_spare_is_429_with_retry_after(tmp_path):
    service_support.RELEASE.clear()
    try:
        with serving(make_config(tmp_path / "data", max_live_sessions=1)) as (url, _):
            with httpx.Client(base_url=url, timeout=30) as http:
                a, b = (
                    http.post("/v1/sessions", json={"model": "scripted-rlm", "contexts": ["d"]}).json() for _ in "ab"
                )
                body = {"model": "scripted-rlm", "stream": True, "messages": [{"role": "user", "content": "!slow"}]}
                with http.stream("POST", "/v1/chat/completions", json={**body, "rlm": {"session": a["id"]}}) as r:
                    lines = r.iter_lines()
                    next(line for line in lines if line.startswith("data: {"))
                    busy = http.post(f"/v1/sessions/{b['id']}/ask", json={"question": "q"})
                    assert busy.status_code == 429 and busy.json()["error"]["code"] == "live_sessions"
                    assert int(busy.headers["retry-after"]) >= 1
                    service_support.RELEASE.set()
                    assert [line for line in lines if line.startswith("data: ")][-1] == "data: [DONE]"
                assert http.post(f"/v1/sessions/{b['id']}/ask", json={"question": "q"}).status_code == 200
    finally:
        service_support.RELEASE.set()


def test_idle_repls_are_closed_and_their_sessions_kept(tmp_path):
    with serving(make_config(tmp_path / "data", session_idle_seconds=0.3)) as (url, service):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        sid = httpx.post(url + "/v1/sessions", json={"model": "scripted-rlm", "contexts": ["idle doc"]}).json()["id"]
        assert ask(client, sid, "!remember") == "kept-8"
        deadline = time.monotonic() + 10
        while service.sessions.get("local", sid).sandbox is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.sessions.get("local", sid).sandbox is None
        assert ask(client, sid, "!recall") == "kept-8 8"


@pytest.mark.parametrize(
    "host, status",
    [("127.0.0.1", 200), ("localhost:1234", 200), ("[::1]:80", 200), ("evil.example", 400), ("127.0.0.1.nip.io", 400)],
)
def test_host_header_must_name_this_server_without_keys(served_rlm, host, status):
    url, _ = served_rlm
    r = httpx.get(url + "/v1/models", headers={"host": host})
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["code"] == "host_not_allowed"


def test_allowed_hosts_from_the_config(tmp_path):
    with serving(make_config(tmp_path / "data", allowed_hosts=["rlm.example.org"])) as (url, _):
        assert httpx.get(url + "/v1/models", headers={"host": "rlm.example.org"}).status_code == 200
        assert httpx.get(url + "/v1/models", headers={"host": "127.0.0.1"}).status_code == 400
