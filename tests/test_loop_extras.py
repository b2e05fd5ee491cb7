"""Compaction, typed answers and tree-wide budget checks before a child starts, driven by the scripted engine."""

from __future__ import annotations

import time

import pytest
from pydantic import BaseModel
from scripting import is_root, last_user, repl

from rlm_local import RLM, InputError
from rlm_local.engines import Request
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.loop.compaction import SUMMARY_REQUEST

DOC = "\n".join(f"record {i}: value {i * 7}" for i in range(400))


def make(replies, context_length: int = 32768, **kwargs) -> tuple[RLM, ScriptedEngine]:
    engine = ScriptedEngine(replies, context_length=context_length)
    return RLM(backend="scripted", engine=engine, **kwargs), engine


# ---- compaction -----------------------------------------------------------------------------------------------
def _long_task(req: Request) -> str:
    """Prints a page of the context a turn; summarises when asked; checks `history` after compacting."""
    last = last_user(req)
    if SUMMARY_REQUEST in last:
        return "Summary: pages 0 and 1 read, nothing found yet; next read page 2."
    if "compacted" in last:
        return repl("print(len(history), history[0]['role'], [m.get('summary') for m in history][-4:])")
    if "Output of" in last and "history" in req.messages[-2]["content"]:
        return "FINAL(done)"
    page = sum("Output of" in m["content"] for m in req.messages if m["role"] == "user")
    return repl(f"print(context[{page} * 1500:{page + 1} * 1500])")


def test_compaction_summarises_near_the_window_and_keeps_the_history_in_the_repl():
    rlm, engine = make(_long_task, context_length=3300, compaction=True, sampling_args={"max_tokens": 200})
    result = rlm.completion(DOC, root_prompt="Find the record with value 2100.")
    assert result.response == "done"
    events = result.trajectory
    (compacted,) = [e for e in events if e["event"] == "compaction"]
    assert compacted["tokens_after"] < compacted["tokens_before"] and compacted["summary"].startswith("Summary:")
    summary_turns = [e for e in events if e["event"] == "root_turn" and e["compaction"]]
    assert len(summary_turns) == 1
    # After compaction the root sees its summary and the note, not the old turns.
    after = [r for r in engine.requests if is_root(r) and "compacted (1 time" in str(r.messages)][0]
    contents = [m["content"] for m in after.messages]
    assert contents[2].startswith("Summary:") and not any("record 60: value 420" in c for c in contents)
    # ...and `history` in the REPL holds every message, the summary marked.
    out = [e for e in events if e["event"] == "cell"][-1]["stdout"]
    assert out.startswith(str(2 + 2 * compacted["turns"] + 2)) and "system" in out and "'true'" in out
    assert all(e["dropped_turns"] == 0 for e in events if e["event"] == "root_turn")
    assert "`history`" in contents[3] and "`history`" not in after.messages[0]["content"]  # the note says so


def test_without_compaction_old_turns_are_dropped_instead():
    rlm, _ = make(_long_task, context_length=3300, sampling_args={"max_tokens": 200}, max_iterations=6)
    result = rlm.completion(DOC, root_prompt="Find the record with value 2100.")
    assert not [e for e in result.trajectory if e["event"] == "compaction"]
    assert max(e["dropped_turns"] for e in result.trajectory if e["event"] == "root_turn") > 0


def test_a_failed_summary_leaves_the_conversation_and_tries_again():
    calls = {"summary": 0}

    def reply(req: Request) -> str:
        if SUMMARY_REQUEST in last_user(req):
            calls["summary"] += 1
            return "```repl\nprint('code, not a summary')\n```"  # no prose: nothing to keep
        return _long_task(req)

    rlm, _ = make(reply, context_length=3300, compaction=True, sampling_args={"max_tokens": 200}, max_iterations=9)
    result = rlm.completion(DOC, root_prompt="q")
    assert calls["summary"] >= 2 and not [e for e in result.trajectory if e["event"] == "compaction"]


# ---- typed answers ---------------------------------------------------------------------------------------------
class Person(BaseModel):
    name: str
    age: int


def test_a_pydantic_answer_is_validated_retried_and_parsed():
    rlm, engine = make([repl("FINAL({'name': 'Ada'})"), repl("FINAL({'name': 'Ada', 'age': 36})")])
    result = rlm.completion("Ada Lovelace, 36, mathematician.", "Who is it?", response_format=Person)
    assert result.parsed == Person(name="Ada", age=36) and result.stopped_reason == "final"
    assert result.response == '{"name":"Ada","age":36}' and result.iterations == 2
    first, second = engine.requests
    assert '"age"' in first.messages[1]["content"]  # the schema was in the task
    assert "does not match the required format: age: Field required" in last_user(second)


def test_a_json_schema_the_model_never_satisfies_ends_with_invalid_answer():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    rlm, _ = make(
        lambda req: repl("import json\nFINAL(json.dumps({'n': 'seven'}))"), max_iterations=3, raise_on_limit=False
    )
    result = rlm.completion("seven", "How many?", response_format=schema)
    assert result.stopped_reason == "invalid_answer" and result.parsed is None
    assert result.invalid_answer == '{"n": "seven"}' and "$['n']: 'seven' is not of type 'integer'" in result.error
    assert result.to_dict()["invalid_answer"] == '{"n": "seven"}'


def test_openai_style_schemas_fences_and_bare_strings():
    wrapped = {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": {"type": "array", "items": {"type": "integer"}}},
    }
    rlm, _ = make([repl("fence = chr(96) * 3\nFINAL(fence + 'json\\n[1, 2]\\n' + fence)")])
    assert rlm.completion("x", response_format=wrapped).parsed == [1, 2]
    rlm, _ = make([repl("FINAL('Paris')")])
    assert rlm.completion("x", response_format={"type": "string"}).parsed == "Paris"


def test_a_bad_response_format_is_an_input_error():
    rlm, _ = make(["FINAL(x)"])
    with pytest.raises(InputError, match="not a valid JSON schema"):
        rlm.completion("x", response_format={"type": "no-such-type"})
    with pytest.raises(InputError, match="pydantic model class or a JSON schema"):
        rlm.completion("x", response_format=int)


# ---- budgets checked before a child starts --------------------------------------------------------------------
def _parent_that_spawns(delay: float):
    def reply(req: Request) -> str:
        if "child task" in req.messages[1]["content"]:
            return repl("FINAL('child done')")
        if "Output of" in last_user(req) or "STOP" in last_user(req):
            return "FINAL(parent done)"
        time.sleep(delay)
        return repl("print(rlm_query('child task', 'some child document text'))")

    return reply


def test_a_child_the_time_left_cannot_cover_is_refused_before_it_starts():
    rlm, _ = make(_parent_that_spawns(0.7), max_depth=2, max_timeout=1.2, raise_on_limit=False)
    result = rlm.completion(DOC)
    out = [e for e in result.trajectory if e["event"] == "cell"][0]["stdout"]
    assert out.startswith("[rlm_query refused:") and "time budget" in out
    assert not [e for e in result.trajectory if e["event"] == "child_start"]
    rlm, _ = make(_parent_that_spawns(0.0), max_depth=2, max_timeout=30)  # plenty of time: the child runs
    result = rlm.completion(DOC)
    assert "child done" in [e for e in result.trajectory if e["event"] == "cell" and e["depth"] == 0][0]["stdout"]


def test_a_child_the_tokens_left_cannot_cover_is_refused_before_it_starts():
    probe, _ = make(_parent_that_spawns(0.0), max_depth=2)
    first_turn = [e for e in probe.completion(DOC).trajectory if e["event"] == "root_turn"][0]["prompt_tokens"]
    rlm, _ = make(_parent_that_spawns(0.0), max_depth=2, max_tokens=int(first_turn * 1.5), raise_on_limit=False)
    result = rlm.completion(DOC)
    out = [e for e in result.trajectory if e["event"] == "cell"][0]["stdout"]
    assert out.startswith("[rlm_query refused:") and "tokens left" in out
    assert not [e for e in result.trajectory if e["event"] == "child_start"]
