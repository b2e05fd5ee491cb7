"""The trajectory viewer in a real headless Chromium (Debian's, driven by Playwright): a recorded run opened
with `rlm-local view`, a child run expanded, a 10,000-sub-call run paged, and a live run in the service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # waits on limits, servers, browsers or clusters: `pytest -q` leaves it out

pytest.importorskip("sse_starlette", reason="the service needs the [server] extra")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("needs Chromium from the Debian packages (apt-get install chromium)", allow_module_level=True)

from scripting import is_root, repl  # noqa: E402
from service_support import free_port  # noqa: E402

from rlm_local import RLM  # noqa: E402
from rlm_local.engines.scripted import ScriptedEngine  # noqa: E402

SHOTS = Path(os.environ.get("RLM_VIEWER_SHOTS", Path(__file__).parent / "artifacts"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def record_run(path: Path) -> None:
    def reply(req):
        if not is_root(req):
            return f"answer to {req.messages[-1]['content'][:30]}"
        user = req.messages[1]["content"]
        if any(m["role"] == "assistant" for m in req.messages):
            return "FINAL(all parts read)"
        if "inner question" in user:
            return repl("FINAL(llm_query('inner look at ' + context))")
        return repl(
            "parts = llm_query_batched(['summarise part ' + str(i) for i in range(5)])\n"
            "inner = rlm_query('inner question', context='the inner document')\nprint(inner)"
        )

    with RLM(engine=ScriptedEngine(reply, model_name="scripted-model"), max_depth=2, trajectory_path=path) as rlm:
        rlm.completion("a long document " * 100, "What do the parts say?")


def start_view(path: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlm_local.cli", "view", str(path), "--port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/runs"), url
    import httpx

    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError(f"rlm-local view did not start: {proc.stderr.read()}") from None
            time.sleep(0.2)


def test_view_a_recorded_run_and_expand_the_child(tmp_path, browser):
    path = tmp_path / "run.jsonl"
    record_run(path)
    proc, url = start_view(path)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.wait_for_selector("#runs a")
        page.click("#runs a")
        page.wait_for_selector("body[data-loaded=yes]")
        assert "What do the parts say?" in page.inner_text("#title")
        assert "all parts read" in page.inner_text("#summary")
        turns = page.locator("li[data-kind=turn]")
        assert turns.count() == 2
        turns.first.locator(".caret").first.click()
        cell = page.locator("li[data-kind=cell]").first
        cell.wait_for()
        cell.locator(".label").first.click()  # the cell's code and output
        assert "llm_query_batched" in cell.inner_text() and "inner look at" in cell.inner_text()
        cell.locator(".caret").first.click()
        batch = page.locator("li[data-kind=batch]").first
        batch.wait_for()
        assert "batch of 5 sub-calls" in batch.inner_text()
        child = page.locator("li[data-kind=child]").first
        child.locator(".caret").first.click()
        child.locator("li[data-kind=turn]").first.wait_for()
        child.locator("li[data-kind=turn] .caret").first.click()
        child.locator("li[data-kind=cell]").first.wait_for()
        child.locator("li[data-kind=cell] .caret").first.click()
        sub = child.locator("li[data-kind=subcall]").first
        sub.wait_for()
        assert "inner look at the inner document" in sub.inner_text()
        batch.locator(".caret").first.click()
        page.locator("li[data-kind=batch] li[data-kind=subcall]").nth(4).wait_for()
        assert page.locator("li[data-kind=batch] li[data-kind=subcall]").count() == 5
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "viewer.png"), full_page=True)
    finally:
        proc.terminate()
        proc.wait(10)


def test_ten_thousand_subcalls_stay_responsive(tmp_path, browser):
    t0 = 1_700_000_000.0
    events = [
        {"event": "run_start", "time": t0, "run_id": "big", "question": "big run", "config": {"model": "m"}},
        {
            "event": "root_turn",
            "time": t0 + 1,
            "run_id": "big",
            "depth": 0,
            "iteration": 1,
            "prompt_tokens": 900,
            "cached_tokens": 800,
            "reply": "code",
            "error": None,
            "seconds": 1.0,
        },
    ]
    for b in range(40):
        for i in range(250):
            events.append(
                {
                    "event": "subcall",
                    "time": t0 + 2 + b,
                    "run_id": "big",
                    "depth": 1,
                    "query": "llm",
                    "prompt": f"chunk {b}-{i}",
                    "response": "ok",
                    "seconds": 0.9,
                    "batch": 250,
                    "usage": {"calls": 1, "prompt_tokens": 100, "cached_tokens": 60, "completion_tokens": 3},
                }
            )
    events += [
        {
            "event": "cell",
            "time": t0 + 45,
            "run_id": "big",
            "depth": 0,
            "iteration": 1,
            "code": "...",
            "batched_rewrites": 0,
            "stdout": "",
            "error": None,
            "final": "done",
            "timed_out": False,
            "restored": False,
            "seconds": 43.0,
        },
        {
            "event": "final",
            "time": t0 + 46,
            "run_id": "big",
            "answer": "done",
            "stopped_reason": "final",
            "iterations": 1,
            "usage": {},
            "seconds": 46.0,
        },
    ]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    proc, url = start_view(path)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        started = time.monotonic()
        page.goto(url.replace("/runs", "/runs/big"))
        page.wait_for_selector("body[data-loaded=yes]")
        page.locator("li[data-kind=turn] .caret").first.click()
        page.locator("li[data-kind=cell] .caret").first.click()
        batches = page.locator("li[data-kind=batch]")
        batches.nth(39).wait_for()
        assert batches.count() == 40 and "250 inside" in batches.first.inner_text()
        batches.first.locator(".caret").first.click()
        first = page.locator("li[data-kind=batch]").first.locator("li[data-kind=subcall]")
        first.nth(99).wait_for()
        assert first.count() == 100  # one page
        more = page.locator("button.more").first
        assert "150 left" in more.inner_text()
        more.click()
        first.nth(199).wait_for()
        assert first.count() == 200
        assert page.locator("li[data-kind=subcall] .hit").first.inner_text() == "60 cached"
        elapsed = time.monotonic() - started
        assert elapsed < 20, f"opening and paging a 10,000-sub-call run took {elapsed:.1f} s"
        assert page.locator("li").count() < 400  # lazily built: never 10,000 nodes in the page
    finally:
        proc.terminate()
        proc.wait(10)


def test_live_run_in_the_service(tmp_path, browser):
    import httpx
    import service_support
    from service_support import make_config, serving

    service_support.RELEASE.clear()
    with serving(make_config(tmp_path / "data")) as (url, service):
        try:
            with httpx.Client(base_url=url, timeout=30) as http:
                with http.stream(
                    "POST",
                    "/v1/chat/completions",
                    json={
                        "model": "scripted-rlm",
                        "stream": True,
                        "messages": [{"role": "user", "content": "doc"}, {"role": "user", "content": "!slow run"}],
                    },
                ) as r:
                    lines = r.iter_lines()
                    run_id = next(json.loads(l[6:])["rlm"]["run_id"] for l in lines if l.startswith("data: {"))
                    page = browser.new_page()
                    page.goto(f"{url}/runs/{run_id}")
                    page.wait_for_selector("#status.running")
                    page.locator("li[data-kind=turn] .caret").first.click()
                    page.wait_for_selector("text=running cell")
                    service_support.RELEASE.set()
                    page.wait_for_selector("#status.done", timeout=20_000)
                    assert "finished" in page.inner_text("#summary")
                    for _ in lines:
                        pass
            page.goto(f"{url}/runs")
            page.wait_for_selector(f"a[href='/runs/{run_id}']")
        finally:
            service_support.RELEASE.set()


def test_runs_page_without_a_key_says_why_and_with_one_lists(tmp_path, browser):
    """Before: with API keys, /runs opened without one showed an empty table and no message."""
    import httpx
    from service_support import make_config, serving

    from rlm_local.service.config import ServiceConfig

    key = "sk-viewer-key-0123"
    config = make_config(tmp_path / "data")
    config.keys = ServiceConfig.from_dict({"keys": {"v": {"key": key}}}).keys
    with serving(config) as (url, _):
        r = httpx.post(
            url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={
                "model": "scripted-rlm",
                "messages": [{"role": "user", "content": "doc"}, {"role": "user", "content": "q"}],
            },
            timeout=30,
        )
        run_id = r.json()["rlm"]["run_id"]
        page = browser.new_page()
        page.goto(f"{url}/runs")
        page.wait_for_selector("#runs td.error")
        message = page.inner_text("#runs td.error")
        assert "needs an API key" in message and "#key=" in message
        page.goto(f"{url}/runs#key={key}")
        page.reload()
        page.wait_for_selector(f"a[href='/runs/{run_id}']")
