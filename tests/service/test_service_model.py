"""The embedded model answers through the service as it does on the CLI: the planted-fact document that
`rlm-local run --context` answers is answered whether it comes as an uploaded file, a session's document
or an earlier chat message (scripts/service_answers.py; before the fix each of these gave the REPL a
one-element list and the model answered 0 of 5)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.model

pytest.importorskip("sse_starlette", reason="the service needs the [server] extra")
pytest.importorskip("openai")


def test_the_service_answers_the_planted_fact_as_the_cli_does(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "scripts" / "service_answers.py"
    spec = importlib.util.spec_from_file_location("service_answers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "answers.json"
    # the service's ways first, so the model computes them (the CLI's identical requests then hit the memo)
    assert module.main(["--tasks", "2", "--ways", "file_ids,messages,session,cli", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    for task in {r["task"] for r in runs}:
        cli = next(r for r in runs if r["task"] == task and r["way"] == "cli")
        for r in (r for r in runs if r["task"] == task and r["way"] != "cli"):
            assert r["context_type"] == "str", r
            assert r["correct"] == cli["correct"] and r["answer"] == cli["answer"], (r, cli)
    assert all(r["correct"] for r in runs), runs  # greedy on fixed documents: the model finds these facts
