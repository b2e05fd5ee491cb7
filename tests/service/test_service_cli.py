"""The README's path end to end: `rlm-local serve` (a real process) over an OpenAI-compatible model server,
a PDF uploaded with curl, two questions in one session with the openai SDK, the run in the viewer's API."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import pytest

pytestmark = pytest.mark.slow  # waits on limits, servers, browsers or clusters: `pytest -q` leaves it out

pytest.importorskip("sse_starlette", reason="the service needs the [server] extra")
openai = pytest.importorskip("openai")

import service_support  # noqa: E402
from pdfs import make_pdf  # noqa: E402
from service_support import free_port, script  # noqa: E402

from rlm_local.engines.scripted import ScriptedEngine  # noqa: E402
from rlm_local.service.bare import create_app  # noqa: E402
from rlm_local.testing import BackgroundServer  # noqa: E402


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_readme_path(tmp_path):
    model_server = BackgroundServer(create_app(ScriptedEngine(script, model_name="scripted-model")))
    with model_server as model_url, served_by_cli(tmp_path, model_url=model_url) as (url, _):
        (tmp_path / "report.pdf").write_bytes(make_pdf("Supplier Acme had 7 late deliveries"))
        out = subprocess.run(
            ["curl", "-s", f"{url}/v1/files", "-F", "purpose=assistants", "-F", f"file=@{tmp_path / 'report.pdf'}"],
            capture_output=True,
            text=True,
            check=True,
        )
        file_id = json.loads(out.stdout)["id"]
        session = httpx.post(f"{url}/v1/sessions", json={"model": "rlm", "file_ids": [file_id]}).json()["id"]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        first = client.chat.completions.create(
            model="rlm",
            messages=[{"role": "user", "content": "!remember it"}],
            extra_body={"rlm": {"session": session}},
        )
        assert first.choices[0].message.content == "kept-50"  # one PDF: a str of its 50 characters
        second = client.chat.completions.create(
            model="rlm",
            stream=True,
            messages=[{"role": "user", "content": "!recall it"}],
            extra_body={"rlm": {"session": session}},
        )
        assert "".join(c.choices[0].delta.content or "" for c in second if c.choices) == "kept-50 50"
        run_id = first.model_extra["rlm"]["run_id"]
        tree = httpx.get(f"{url}/v1/runs/{run_id}/tree").json()
        assert tree["status"] == "done" and tree["children"][0]["kind"] == "turn"
        assert "<script" in httpx.get(f"{url}/runs/{run_id}").text
        assert [m.id for m in client.models.list().data] == ["scripted-model", "rlm"]


def wait_up(url: str, proc: subprocess.Popen, path: str = "/health") -> httpx.Response:
    deadline = time.monotonic() + 60
    while True:
        try:
            return httpx.get(url + path, timeout=1)
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.3)


@contextmanager
def served_by_cli(tmp_path, *extra: str, model_url: str):
    """`rlm-local serve` in its own process over an OpenAI-compatible model server; yields (url, process)."""
    port = free_port()
    cmd = [sys.executable, "-m", "rlm_local.cli", "serve", "--backend", "openai", "--base-url", f"{model_url}/v1"]
    cmd += ["--port", str(port), "--data-dir", str(tmp_path / "data"), "--max-iterations", "4", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_up(url, proc).status_code == 200
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(20)


@pytest.fixture
def model_server():
    service_support.RELEASE.clear()
    try:
        with BackgroundServer(create_app(ScriptedEngine(script, model_name="scripted-model"))) as url:
            yield url
    finally:
        service_support.RELEASE.set()


SLOW = {"model": "rlm", "messages": [{"role": "user", "content": "doc"}, {"role": "user", "content": "!slow q"}]}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_graceful_stop_fails_open_streams_and_waiting_clients_explicitly(tmp_path, model_server, sig):
    """Before: the stream ended with no error and no [DONE], and the SDK returned an empty answer."""
    with served_by_cli(tmp_path, model_url=model_server) as (url, proc):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        stream = client.chat.completions.create(**SLOW, stream=True)
        next(iter(stream))
        waiting: dict = {}

        def wait_whole() -> None:
            try:
                client.chat.completions.create(
                    model="rlm", messages=[{"role": "user", "content": "doc 2"}, {"role": "user", "content": "!slow 2"}]
                )
            except openai.APIStatusError as exc:
                waiting["status"] = exc.status_code

        import threading

        t = threading.Thread(target=wait_whole)
        t.start()
        time.sleep(1.0)
        proc.send_signal(sig)
        with pytest.raises(openai.APIError) as exc:
            for _ in stream:
                pass
        assert exc.value.body["code"] == "server_shutdown"
        t.join(30)
        assert waiting.get("status") == 503
        assert proc.wait(30) is not None


def test_after_a_hard_kill_the_listing_and_the_run_agree(tmp_path, model_server):
    """Before: /runs (the listing) showed the run as running forever while GET /v1/runs/{id} said interrupted."""
    with served_by_cli(tmp_path, model_url=model_server) as (url, proc):
        with (
            httpx.Client(base_url=url, timeout=30) as http,
            http.stream("POST", "/v1/chat/completions", json={**SLOW, "stream": True}) as r,
        ):
            run_id = next(json.loads(x[6:])["rlm"]["run_id"] for x in r.iter_lines() if x.startswith("data: {"))
            proc.kill()  # SIGKILL: nothing gets to write "cancelled"
    with served_by_cli(tmp_path, model_url=model_server) as (url, _):
        listed = {m["id"]: m["status"] for m in httpx.get(f"{url}/v1/runs").json()["data"]}
        assert listed[run_id] == "interrupted"
        assert httpx.get(f"{url}/v1/runs/{run_id}").json()["status"] == "interrupted"


def test_serve_bare_is_the_service_in_bare_mode(tmp_path, model_server):
    port = free_port()
    cmd = [sys.executable, "-m", "rlm_local.cli", "serve", "--bare", "--backend", "openai"]
    proc = subprocess.Popen(
        cmd + ["--base-url", f"{model_server}/v1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_up(url, proc).json()
        assert health["model"] == "scripted-model" and health["backend"] == "openai"
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        r = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "sub:hi"
        with pytest.raises(openai.BadRequestError) as exc:  # as llama.cpp's server answers; before: 500
            client.chat.completions.create(
                model="any",
                messages=[
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "a"},
                    {"role": "assistant", "content": "b"},
                ],
            )
        assert exc.value.body["param"] == "messages"
        assert httpx.get(f"{url}/v1/files").status_code == 404  # bare: no files, sessions or runs
        assert httpx.get(f"{url}/health", headers={"host": "evil.example"}).status_code == 400
    finally:
        proc.terminate()
        proc.wait(20)


def test_view_serves_loopback_names_only_or_needs_a_key(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"event": "run_start", "time": 1.0, "run_id": "r1", "question": "q"}) + "\n")
    for extra, key in (([], None), (["--key", "sk-viewer-123456"], "sk-viewer-123456")):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlm_local.cli", "view", str(path), "--port", str(port), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            printed = proc.stdout.readline().strip()
            url = f"http://127.0.0.1:{port}"
            wait_up(url, proc, "/runs")
            if key is None:  # before: any Host header was served (DNS rebinding)
                assert httpx.get(url + "/v1/runs").status_code == 200
                assert httpx.get(url + "/v1/runs", headers={"host": "attacker.example"}).status_code == 400
            else:
                assert printed.endswith(f"#key={key}")
                assert httpx.get(url + "/v1/runs").status_code == 401
                ok = httpx.get(url + "/v1/runs", headers={"authorization": f"Bearer {key}"})
                assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "r1"
        finally:
            proc.terminate()
            proc.wait(10)
