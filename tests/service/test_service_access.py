"""API keys: no key or a wrong key is refused, keys never see each other's files, sessions or runs, and
per-key limits on concurrent runs and tokens per minute hold while other keys keep being served."""

from __future__ import annotations

import json

import httpx
import pytest

pytest.importorskip("sse_starlette", reason="the service needs the [server] extra")
openai = pytest.importorskip("openai")

import service_support  # noqa: E402
from service_support import make_config, serving  # noqa: E402

from rlm_local.service.auth import Access  # noqa: E402
from rlm_local.service.config import ConfigError, ServiceConfig  # noqa: E402
from rlm_local.service.schemas import ApiError  # noqa: E402

ALICE, BOB = "sk-alice-0123456789", "sk-bob-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("data"))
    keys = ServiceConfig.from_dict(
        {"keys": {"alice": {"key": ALICE, "max_concurrent_runs": 1}, "bob": {"key": BOB, "tokens_per_minute": 1}}}
    ).keys
    config.keys = keys
    with serving(config) as (url, service):
        yield url, service


def sdk(url: str, key: str):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_keys_are_required(server):
    url, _ = server
    with pytest.raises(openai.AuthenticationError):
        sdk(url, "sk-wrong-key-000000").models.list()
    with httpx.Client(base_url=url) as http:
        r = http.get("/v1/files")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert "scripted-rlm" in [m.id for m in sdk(url, ALICE).models.list().data]


def test_keys_never_see_each_other(server):
    url, _ = server
    alice, bob = sdk(url, ALICE), sdk(url, BOB)
    f = alice.files.create(file=("a.txt", b"alice's private ALICE-DOC"), purpose="assistants")
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.delete(f.id)
    assert f.id not in {x.id for x in bob.files.list().data}
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.create(
            model="scripted-rlm", messages=[{"role": "user", "content": "q"}], extra_body={"rlm": {"file_ids": [f.id]}}
        )
    r = alice.chat.completions.create(
        model="scripted-rlm", messages=[{"role": "user", "content": "q"}], extra_body={"rlm": {"file_ids": [f.id]}}
    )
    run_id = r.model_extra["rlm"]["run_id"]
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {BOB}"}) as http:
        assert http.get(f"/v1/runs/{run_id}").status_code == 404
        assert http.get(f"/v1/runs/{run_id}/tree").status_code == 404
        assert run_id not in json.dumps(http.get("/v1/runs").json())
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ALICE}"}) as http:
        assert http.get(f"/v1/runs/{run_id}").json()["status"] == "done"
        s = http.post("/v1/sessions", json={"model": "scripted-rlm", "file_ids": [f.id]}).json()
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {BOB}"}) as http:
        assert http.get(f"/v1/sessions/{s['id']}").status_code == 404
        assert http.post(f"/v1/sessions/{s['id']}/ask", json={"question": "q"}).status_code == 404
        assert http.delete(f"/v1/sessions/{s['id']}").status_code == 404
        assert http.get("/v1/sessions").json()["data"] == []
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.create(
            model="scripted-rlm", messages=[{"role": "user", "content": "q"}], extra_body={"rlm": {"session": s["id"]}}
        )


def test_concurrent_run_limit_and_tokens_per_minute(server):
    url, service = server
    alice, bob = sdk(url, ALICE), sdk(url, BOB)
    service_support.RELEASE.clear()
    try:
        with httpx.Client(base_url=url, timeout=30, headers={"authorization": f"Bearer {ALICE}"}) as http:
            with http.stream(
                "POST",
                "/v1/chat/completions",
                json={
                    "model": "scripted-rlm",
                    "stream": True,
                    "messages": [{"role": "user", "content": "doc"}, {"role": "user", "content": "!slow one"}],
                },
            ) as r:
                lines = r.iter_lines()
                next(line for line in lines if line.startswith("data: {"))
                with pytest.raises(openai.RateLimitError) as exc:  # alice's one run at a time is taken
                    alice.chat.completions.create(model="scripted-rlm", messages=[{"role": "user", "content": "x"}])
                assert "concurrent-run limit" in exc.value.message
                assert exc.value.response.headers["retry-after"] == "1"
                service_support.RELEASE.set()
                assert [line for line in lines if line.startswith("data: ")][-1] == "data: [DONE]"
    finally:
        service_support.RELEASE.set()
    assert alice.chat.completions.create(model="scripted-rlm", messages=[{"role": "user", "content": "x"}])
    # (a text of its own: identical greedy requests are answered from the scheduler's memo, for no tokens)
    assert bob.chat.completions.create(
        model="scripted-rlm", messages=[{"role": "user", "content": "bob's"}]
    ).usage.total_tokens
    with pytest.raises(openai.RateLimitError) as exc:  # bob used his minute's tokens
        bob.chat.completions.create(model="scripted-rlm", messages=[{"role": "user", "content": "x"}])
    assert "tokens-per-minute" in exc.value.message
    assert 55 <= int(exc.value.response.headers["retry-after"]) <= 60  # when the window has drained
    assert alice.chat.completions.create(model="scripted-rlm", messages=[{"role": "user", "content": "x"}])


def test_no_keys_means_loopback_only():
    access = Access({})
    assert access.identify(None, "127.0.0.1").owner == "local"
    with pytest.raises(ApiError) as exc:
        access.identify(None, "10.1.2.3")
    assert exc.value.status == 403


def test_config_file(tmp_path):
    cfg = tmp_path / "rlm.toml"
    cfg.write_text(
        'data_dir = "d"\nsession_ttl = 60\n[rlm.docs]\nbackend = "openai"\nmodel = "m"\n'
        'base_url = "http://127.0.0.1:1/v1"\nmax_iterations = 5\n[contexts.h]\npath = "h.md"\n'
        '[keys.a]\nkey = "sk-aaaaaaaaaa"\ntokens_per_minute = 10\n'
    )
    c = ServiceConfig.load(cfg)
    assert c.data_dir == tmp_path / "d" and c.session_ttl == 60 and c.contexts["h"] == tmp_path / "h.md"
    assert c.rlms["docs"].budgets == {"max_iterations": 5} and c.keys["sk-aaaaaaaaaa"].name == "a"
    cfg.write_text("[rlm.docs]\nmax_iteration = 5\n")
    with pytest.raises(ConfigError, match="max_iteration"):
        ServiceConfig.load(cfg)


def test_health_and_metrics_follow_the_keys_unless_made_public(server, tmp_path):
    url, _ = server
    for path in ("/health", "/metrics"):  # before: both answered clients that got 401 everywhere else
        assert httpx.get(url + path).status_code == 401
        assert httpx.get(url + path, headers={"authorization": f"Bearer {ALICE}"}).status_code == 200
    config = make_config(tmp_path / "open", public_health=True, public_metrics=True)
    config.keys = ServiceConfig.from_dict({"keys": {"a": {"key": ALICE}}}).keys
    with serving(config) as (open_url, _):
        assert httpx.get(open_url + "/health").status_code == 200
        assert "rlm_runs_active" in httpx.get(open_url + "/metrics").text
    with pytest.raises(ConfigError, match="public_health"):
        ServiceConfig.from_dict({"public_health": "yes"})


def test_refusals_are_counted(server):
    url, _ = server
    text = httpx.get(url + "/metrics", headers={"authorization": f"Bearer {ALICE}"}).text
    assert 'rlm_runs_rejected_total{reason="' in text  # the 429s of the limits test
    assert 'status="401"' in text


def test_runs_page_without_a_key_says_why(server):
    """The page has no data in it; its script asks the API and shows the 401's reason (tests/service/test_viewer.py
    runs it in Chromium): the message it shows comes from here."""
    url, _ = server
    r = httpx.get(url + "/v1/runs")
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert "this server needs an API key" in httpx.get(url + "/viewer/viewer.js").text
