"""The README's path end to end: `rlm-local serve` (a real process) over an OpenAI-compatible model server,
a PDF uploaded with curl, two questions in one session with the openai SDK, the run in the viewer's API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.slow  # waits on limits, servers, browsers or clusters: `pytest -q` leaves it out

pytest.importorskip("sse_starlette", reason="the service needs the [server] extra")
openai = pytest.importorskip("openai")

from service_support import free_port, script  # noqa: E402
from test_service_sessions import make_pdf  # noqa: E402

from rlm_local.engines.scripted import ScriptedEngine  # noqa: E402
from rlm_local.service.bare import create_app  # noqa: E402
from rlm_local.testing import BackgroundServer  # noqa: E402


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_readme_path(tmp_path):
    model_server = BackgroundServer(create_app(ScriptedEngine(script, model_name="scripted-model")))
    with model_server as model_url:
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rlm_local.cli",
                "serve",
                "--backend",
                "openai",
                "--base-url",
                f"{model_url}/v1",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
                "--max-iterations",
                "4",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.3)
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
            assert first.choices[0].message.content == "kept-1"
            second = client.chat.completions.create(
                model="rlm",
                stream=True,
                messages=[{"role": "user", "content": "!recall it"}],
                extra_body={"rlm": {"session": session}},
            )
            assert "".join(c.choices[0].delta.content or "" for c in second if c.choices) == "kept-1 1"
            run_id = first.model_extra["rlm"]["run_id"]
            tree = httpx.get(f"{url}/v1/runs/{run_id}/tree").json()
            assert tree["status"] == "done" and tree["children"][0]["kind"] == "turn"
            assert "<script" in httpx.get(f"{url}/runs/{run_id}").text
            assert [m.id for m in client.models.list().data] == ["scripted-model", "rlm"]
        finally:
            proc.terminate()
            proc.wait(20)
