"""`rlm-local replay`: a recorded run re-run with its recorded replies through the real sandbox."""

from __future__ import annotations

import json

import pytest
from scripting import is_root, last_user, repl

from rlm_local import RLM
from rlm_local.cli import main
from rlm_local.engines import Request
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.errors import ReplayError
from rlm_local.replay import replay

DOC = "\n".join(f"line {i}: filler" for i in range(300)) + "\nThe launch code is 7731.\n"


def root_model(req: Request) -> str:
    if not is_root(req):
        return f"sub says: {last_user(req)[:30]}"
    last = last_user(req)
    if "child task" in req.messages[1]["content"]:
        return repl("FINAL(context.upper())")
    if "Output of" not in last:
        return repl(
            "hits = [l for l in context.splitlines() if 'launch' in l]\nprint(hits)\n"
            "print(llm_query_batched(['first ' + hits[0], 'second']))\nprint(rlm_query('child task', 'abc'))"
        )
    return repl("FINAL(hits[0].split()[-1].rstrip('.'))")


@pytest.fixture
def recorded(tmp_path):
    context = tmp_path / "doc.txt"
    context.write_text(DOC)
    path = tmp_path / "run.jsonl"
    with RLM(engine=ScriptedEngine(root_model), max_depth=2, trajectory_path=path, max_concurrent_subcalls=1) as rlm:
        result = rlm.completion(DOC, "What is the launch code?")
    assert result.response == "7731"
    return path, context


def test_a_replay_reproduces_the_run_through_the_sandbox(recorded, tmp_path):
    path, context = recorded
    out = tmp_path / "replayed.jsonl"
    report = replay(path, str(context), trajectory=str(out))
    assert report.same_answer and report.answer == "7731" and report.stopped_reason == "final"
    assert report.first_difference is None and report.cells_replayed == report.cells_recorded == 3
    events = [json.loads(line) for line in out.read_text().splitlines()]
    cell = [e for e in events if e["event"] == "cell" and e["depth"] == 0][0]
    assert "sub says: first The launch code is 7731" in cell["stdout"] and "ABC" in cell["stdout"]


def test_a_run_that_now_diverges_says_where(recorded):
    path, context = recorded
    lines = path.read_text().splitlines()
    last_turn = max(i for i, line in enumerate(lines) if '"root_turn"' in line and '"depth": 0' in line)
    path.write_text("\n".join(lines[:last_turn] + lines[last_turn + 1 :]) + "\n")  # as if the code asked one turn more
    report = replay(path, str(context))
    assert not report.same_answer and report.stopped_reason == "engine_error"
    assert report.first_difference == "the recording has no more root turns"


def test_the_cli_prints_the_answer_and_exits_0_when_it_matches(recorded, capsys):
    path, context = recorded
    assert main(["replay", str(path), "--context", str(context)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "7731" and "the same answer" in captured.err


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda text: text.replace('"version": 2', '"version": 1'), "written by trajectory format 1"),
        (lambda text: text.replace(', "version": 2', ""), "an rlm-local without replay"),
        (lambda text: text.replace("\n", "\n{not json\n", 1), ":2: not a JSON line: the file is damaged"),
        (lambda text: '"just a string"\n' + text, ":1: not a trajectory event"),
        (lambda text: "", "no run in this file"),
    ],
)
def test_a_file_from_another_version_or_damaged_is_one_clear_line(recorded, capsys, damage, message):
    path, context = recorded
    path.write_text(damage(path.read_text()))
    with pytest.raises(ReplayError, match=message):
        replay(path, str(context))
    assert main(["replay", str(path), "--context", str(context)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlm-local: error:") and len(err.splitlines()) == 1


def test_the_wrong_context_is_refused(recorded, tmp_path):
    path, _ = recorded
    other = tmp_path / "other.txt"
    other.write_text(DOC + "tampered")
    with pytest.raises(ReplayError, match="is not the context of run"):
        replay(path, str(other))


def test_a_base_model_run_and_a_list_context_replay_too(tmp_path):
    def model(req: Request) -> str:
        if req.prompt.startswith("Question:"):
            return " blue"
        return "print(llm_query('colour?'))" if "Output:" not in req.prompt[-400:] else "FINAL('done')"

    docs = ["first document", "second document"]
    path = tmp_path / "run.jsonl"
    engine = ScriptedEngine(model, prompt_format="completion")
    with RLM(engine=engine, trajectory_path=path) as rlm:
        assert rlm.completion(docs, "q").response == "done"
    context = tmp_path / "docs.json"
    context.write_text(json.dumps(docs))
    report = replay(path, str(context))
    assert report.same_answer and report.first_difference is None
