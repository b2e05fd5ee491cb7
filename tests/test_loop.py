"""The RLM loop, driven deterministically by the scripted engine, with the real sandbox and scheduler."""

from __future__ import annotations

import json
import time

import pytest
from scripting import is_root, last_user, repl

import rlm_local
from rlm_local import RLM, TimeoutExceededError, TokenLimitExceededError
from rlm_local.engines import EngineError, Request
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.rlm import ContextError, RLMError
from rlm_local.runlog.trajectory import read_trajectory

DOC = "\n".join(f"line {i}: nothing to see" for i in range(200)) + "\nThe vault code is 9157.\n"


def make(replies, **kwargs) -> tuple[RLM, ScriptedEngine]:
    engine = ScriptedEngine(replies)
    return RLM(backend="scripted", engine=engine, **kwargs), engine


def test_final_in_code_after_looking():
    rlm, engine = make(
        [
            repl("hits = [l for l in context.split('\\n') if 'vault' in l]\nprint(hits)"),
            repl("FINAL(hits[0].split()[-1].rstrip('.'))"),
        ]
    )
    result = rlm.completion(DOC, root_prompt="What is the vault code?")
    assert result.response == "9157"
    assert result.stopped_reason == "final" and result.iterations == 2
    # the root saw the output of its first cell, and never the context itself
    second = engine.requests[1]
    assert "The vault code is 9157." in last_user(second)
    assert all("line 150: nothing" not in m["content"] for m in engine.requests[0].messages)
    assert "What is the vault code?" in engine.requests[0].messages[1]["content"]


def test_final_var_in_code_and_in_text():
    rlm, _ = make([repl("answer = context[-24:].strip()\nFINAL_VAR('answer')")])
    assert rlm.completion(DOC, "q").response == "The vault code is 9157."
    rlm, _ = make([repl("res = 'abc' * 2") + "\nFINAL_VAR(res)"])
    assert rlm.completion(DOC, "q").response == "abcabc"


def test_final_in_text_without_code():
    rlm, _ = make(['I already know.\nFINAL("forty two")'])
    result = rlm.completion(DOC, "q")
    assert result.response == "forty two" and result.iterations == 1


def test_text_final_next_to_code_is_not_trusted():
    rlm, engine = make([repl("print(1)") + "FINAL(a guess)", "FINAL(checked)"])
    assert rlm.completion(DOC, "q").response == "checked"
    assert "was ignored" in last_user(engine.requests[1])


def test_errors_are_fed_back_and_run_continues():
    rlm, engine = make([repl("x = 1/0"), repl("import os"), "FINAL(done)"])
    result = rlm.completion(DOC, "q")
    assert result.response == "done"
    assert "ZeroDivisionError" in last_user(engine.requests[1])
    assert "os" in last_user(engine.requests[2]) and "not" in last_user(engine.requests[2])


def test_reply_without_code_gets_a_nudge():
    rlm, engine = make(["Hmm, let me think about it.", "FINAL(ok)"])
    assert rlm.completion(DOC, "q").response == "ok"
    assert "no ```repl code block" in last_user(engine.requests[1])


def test_max_iterations_asks_once_for_a_final_answer():
    rlm, engine = make([repl("print('still looking')")] * 3 + ["FINAL(best guess)"], max_iterations=3)
    result = rlm.completion(DOC, "q")
    assert result.stopped_reason == "max_iterations"
    assert result.response == "best guess"
    assert "iterations budget" in last_user(engine.requests[-1])
    assert len(engine.requests) == 4


def test_max_subcalls_stops_the_run_and_the_cell_sees_the_error():
    def reply(req: Request) -> str:
        if not is_root(req):
            return "sub answer"
        if "STOP" in last_user(req):
            return "FINAL(partial)"
        return repl("out = llm_query_batched(['a', 'b', 'c', 'd'])\nprint(out)\nprint(llm_query('e'))")

    rlm, engine = make(reply, max_subcalls=4, max_iterations=5)
    result = rlm.completion(DOC, "q")
    assert result.stopped_reason == "max_subcalls"
    assert result.response == "partial"
    cells = [e for e in result.trajectory if e["event"] == "cell"]
    assert len(cells) == 1 and "sub answer" in cells[0]["stdout"] and "used up" in cells[0]["error"]
    assert sum(not is_root(r) for r in engine.requests) == 4  # the refused call never reached the engine


def test_an_oversized_batch_is_refused_without_ending_the_run():
    def reply(req: Request) -> str:
        if not is_root(req):
            return "sub answer"
        if "only 3 of 3 left" in last_user(req):
            return repl("print(llm_query_batched(['a', 'b']))")
        if "sub answer" in last_user(req):
            return "FINAL(done)"
        return repl("print(llm_query_batched(['a', 'b', 'c', 'd']))")

    rlm, engine = make(reply, max_subcalls=3)
    result = rlm.completion(DOC, "q")
    assert result.stopped_reason == "final" and result.response == "done"
    assert sum(not is_root(r) for r in engine.requests) == 2


def test_final_of_a_variable_name_in_text_returns_its_value():
    rlm, _ = make([repl("result = 6 * 7"), "FINAL(result)"])
    assert rlm.completion(DOC, "q").response == "42"
    rlm, _ = make(["FINAL(Paris)"])  # no such variable: the text itself is the answer
    assert rlm.completion(DOC, "q").response == "Paris"


def test_budget_stop_never_returns_code_as_the_answer():
    rlm, _ = make([repl("print(1)"), "I could not finish.\n" + repl("print(2)")], max_iterations=1)
    result = rlm.completion(DOC, "q")
    assert result.stopped_reason == "max_iterations"
    assert result.response.startswith("I could not finish.") and "print(2)" not in result.response


def test_bad_budgets_are_refused():
    for kwargs in ({"max_timeout": 0}, {"max_tokens": -5}, {"max_subcalls": -1}, {"max_iterations": 0}):
        with pytest.raises(RLMError):
            make(["FINAL(x)"], **kwargs)


def test_closed_rlm_refuses_new_runs():
    rlm, _ = make(["FINAL(x)"])
    rlm.close()
    with pytest.raises(RLMError, match="closed"):
        rlm.completion(DOC, "q")


def test_max_tokens_budget():
    def reply(req: Request) -> str:
        return "FINAL(partial)" if "STOP" in last_user(req) else repl("print('x' * 10)")

    rlm, _ = make(reply, max_tokens=1500, max_iterations=50, raise_on_limit=False)
    result = rlm.completion(DOC, "q")
    assert result.stopped_reason == "max_tokens"
    assert result.response == "partial"
    assert 1 < result.iterations < 50
    # The reference's way (the default): the exception, carrying the best partial answer and the result.
    rlm, _ = make(reply, max_tokens=1500, max_iterations=50)
    with pytest.raises(TokenLimitExceededError) as caught:
        rlm.completion(DOC, "q")
    err = caught.value
    assert err.partial_answer == "partial" and err.token_limit == 1500 and err.tokens_used >= 1500
    assert err.result.stopped_reason == "max_tokens" and isinstance(err, rlm_local.Error)


def test_max_timeout_budget():
    def reply(req: Request) -> str:
        if "STOP" in last_user(req):
            return "FINAL(late)"
        time.sleep(0.3)
        return repl("print(1)")

    rlm, _ = make(reply, max_timeout=0.5, max_iterations=50)
    with pytest.raises(TimeoutExceededError) as caught:
        rlm.completion(DOC, "q")
    err = caught.value
    assert err.partial_answer == "late" and err.timeout == 0.5 and err.elapsed >= 0.5
    result = err.result
    assert result.stopped_reason == "max_timeout" and result.response == "late"
    assert result.iterations <= 3


def test_batched_subcalls_are_one_engine_call_and_usage_is_counted():
    def reply(req: Request) -> str:
        if not is_root(req):
            return f"echo:{last_user(req)}"
        if "Output of your code" in last_user(req):
            return "FINAL(done)"
        return repl("answers = llm_query_batched([f'part {i}' for i in range(5)])\nprint(answers)")

    rlm, engine = make(reply)
    result = rlm.completion(DOC, "q")
    assert result.response == "done"
    assert 5 in engine.batches  # the five siblings went to the engine together
    usage = result.usage_summary
    assert usage.by_role["sub"].calls == 5 and usage.by_role["root"].calls == 2
    assert usage.by_depth[1].calls == 5 and usage.by_depth[0].calls == 2
    cell = next(e for e in result.trajectory if e["event"] == "cell")
    assert "echo:part 4" in cell["stdout"]


def test_implicit_batching_of_a_comprehension():
    def reply(req: Request) -> str:
        if not is_root(req):
            return "sub"
        if "Output of your code" in last_user(req):
            return "FINAL(done)"
        return repl("res = [llm_query(f'summarise {c[:10]}') for c in context]\nprint(len(res))")

    rlm, engine = make(reply)
    result = rlm.completion(["doc one", "doc two", "doc three", "doc four"], "q")
    assert result.response == "done"
    assert 4 in engine.batches
    cell = next(e for e in result.trajectory if e["event"] == "cell")
    assert cell["batched_rewrites"] == 1 and cell["stdout"].strip() == "4"


def test_several_contexts_list_and_dict():
    rlm, engine = make([repl("print(len(context), context_1)"), "FINAL(ok)"])
    rlm.completion(["alpha", "beta", "gamma"], "q")
    first = engine.requests[0].messages[1]["content"]
    assert "3 documents" in first and "context_0" in first
    assert "3 beta" in last_user(engine.requests[1])
    rlm, engine = make([repl("print(sorted(context), report)"), "FINAL(ok)"])
    rlm.completion({"report": "annual numbers", "memo": "short note"}, "q")
    assert "['memo', 'report'] annual numbers" in last_user(engine.requests[1])


def test_rlm_query_runs_a_child_with_its_own_repl():
    def reply(req: Request) -> str:
        if not is_root(req):
            return "plain sub-call"
        first = req.messages[1]["content"]
        if "count the words" in first:  # the child's own loop
            if "Output of your code" in last_user(req):
                return "FINAL(child says 3)"
            return repl("print(len(context.split()))")
        if "Output of your code" in last_user(req):
            return "FINAL(parent done)"
        return repl("secret_parent_var = 1\nr = rlm_query('count the words', context='one two three')\nprint(r)")

    rlm, _ = make(reply, max_depth=2)
    result = rlm.completion(DOC, "q")
    assert result.response == "parent done"
    cells = [e for e in result.trajectory if e["event"] == "cell"]
    assert any(c["depth"] == 1 and c["stdout"].strip() == "3" for c in cells)
    assert any(c["depth"] == 0 and "child says 3" in c["stdout"] for c in cells)
    assert result.usage_summary.by_depth[1].calls == 2  # the child's two root turns
    rlm_events = [e for e in result.trajectory if e["event"] == "subcall" and e["query"] == "rlm"]
    assert len(rlm_events) == 1 and rlm_events[0]["response"] == "child says 3"


def test_child_repl_is_isolated_from_parent():
    def reply(req: Request) -> str:
        first = req.messages[1]["content"]
        if "child task" in first:
            return repl("try:\n    print(secret_parent_var)\nexcept NameError:\n    FINAL('isolated')")
        if "Output of your code" in last_user(req):
            return "FINAL(done)"
        return repl("secret_parent_var = 1\nprint(rlm_query('child task', context='c'))")

    rlm, _ = make(reply, max_depth=2)
    result = rlm.completion(DOC, "q")
    cell = [e for e in result.trajectory if e["event"] == "cell" and e["depth"] == 0][0]
    assert "isolated" in cell["stdout"]


def test_rlm_query_at_max_depth_degrades_to_llm_query():
    def reply(req: Request) -> str:
        if not is_root(req):
            return "answered by a plain sub-call"
        if "Output of your code" in last_user(req):
            return "FINAL(done)"
        return repl("print(rlm_query('sub task'))")

    rlm, _ = make(reply, max_depth=1)
    result = rlm.completion(DOC, "q")
    cell = next(e for e in result.trajectory if e["event"] == "cell")
    assert "answered by a plain sub-call" in cell["stdout"]
    assert [e["query"] for e in result.trajectory if e["event"] == "subcall"] == ["llm"]


def test_other_backend_for_subcalls_and_usage_per_model():
    sub = ScriptedEngine(lambda req: "from the sub model", model_name="sub-model")
    root = ScriptedEngine([repl("print(llm_query('hi'))"), "FINAL(x)"], model_name="root-model")
    rlm = RLM(backend="scripted", engine=root, sub_engine=sub)
    result = rlm.completion(DOC, "q")
    assert set(result.usage_summary.by_model) == {"root-model", "sub-model"}
    assert result.usage_summary.model_usage_summaries["sub-model"].total_calls == 1
    assert len(sub.requests) == 1


def test_trajectory_file_has_every_kind_of_event_and_never_the_whole_context(tmp_path):
    big = "filler text. " * 40_000 + "needle 4242"
    path = tmp_path / "run.jsonl"

    def reply(req: Request) -> str:
        if not is_root(req):
            return "sub"
        if "Output of your code" in last_user(req):
            return "FINAL(4242)"
        return repl("print(llm_query('look: ' + context[-20:]))")

    rlm, _ = make(reply, trajectory_path=path)
    result = rlm.completion(big, "find the needle")
    events = read_trajectory(path)
    kinds = [e["event"] for e in events]
    for kind in ("run_start", "context", "root_turn", "cell", "subcall", "final"):
        assert kind in kinds
    assert events == json.loads(json.dumps(result.trajectory))
    assert all(e["run_id"] == result.run_id for e in events)
    assert events[-1]["answer"] == "4242" and events[-1]["stopped_reason"] == "final"
    assert path.stat().st_size < 60_000  # the 520,000-character context is not in it
    turn = next(e for e in events if e["event"] == "root_turn")
    assert turn["prompt_tokens"] > 0 and "seconds" in turn


def test_bad_input_raises_clear_errors():
    rlm, _ = make(["FINAL(x)"])
    for bad in ("", "   \n", [], [1, 2], {"a": 3}, 42):
        with pytest.raises(ContextError):
            rlm.completion(bad, "q")
    with pytest.raises(EngineError, match="unknown backend"):
        RLM(backend="nope")
    with pytest.raises(TypeError):
        RLM(backend="scripted", backend_kwargs={"replies": 5})


def test_engine_error_on_root_turn_ends_with_engine_error():
    rlm, _ = make([])  # the scripted engine has no replies: every call fails
    result = rlm.completion(DOC, "q")
    assert result.stopped_reason == "engine_error"
    assert result.response == ""


def test_custom_system_prompt_with_braces_does_not_crash():
    rlm, engine = make(["FINAL(ok)"], custom_system_prompt='Answer as JSON like {"a": 1} {missing}')
    assert rlm.completion(DOC, "q").response == "ok"
    assert '{"a": 1} {missing}' in engine.requests[0].messages[0]["content"]


def test_final_var_is_read_directly_never_run_as_a_generated_cell():
    rlm, engine = make([repl("res = 'abc' * 2") + "\nFINAL_VAR(res)"])
    result = rlm.completion(DOC, "q")
    assert result.response == "abcabc"
    assert [e["code"] for e in result.trajectory if e["event"] == "cell"] == ["res = 'abc' * 2"]
    rlm, engine = make(["FINAL_VAR(nothing_here)", "FINAL(recovered)"])
    result = rlm.completion(DOC, "q")
    assert result.response == "recovered"
    assert "no variable named 'nothing_here'" in last_user(engine.requests[1])
    assert not [e for e in result.trajectory if e["event"] == "cell"]


def test_answer_dict_needs_ready():
    rlm, engine = make(
        [
            repl("answer = {'content': 'draft', 'ready': False}"),
            repl("answer['content'] = 'checked'\nanswer['ready'] = True"),
        ]
    )
    result = rlm.completion(DOC, "q")
    assert result.response == "checked" and result.iterations == 2


def test_a_sandbox_that_cannot_start_is_a_setup_error(monkeypatch):
    import rlm_local
    from rlm_local.loop import run as run_module
    from rlm_local.sandbox import SandboxError

    def broken(*args, **kwargs):
        raise SandboxError("sandbox worker failed to start: no interpreter")

    monkeypatch.setattr(run_module, "Sandbox", broken)
    rlm, _ = make(["FINAL(x)"])
    with pytest.raises(rlm_local.SetupError, match="could not start the sandbox") as info:
        rlm.completion(DOC, "q")
    assert isinstance(info.value, rlm_local.Error)


def test_failures_and_budget_stops_are_logged(caplog):
    import logging

    rlm, _ = make([])
    with caplog.at_level(logging.INFO, logger="rlm_local"):
        rlm.completion(DOC, "q")
    messages = [r.getMessage() for r in caplog.records if r.name == "rlm_local.run"]
    assert any("root call failed (attempt 2)" in m for m in messages)
    assert any("engine_error after 1 turns" in m for m in messages)


def test_trajectory_file_stays_valid_utf8_with_lone_surrogates(tmp_path):
    from rlm_local import RLM
    from rlm_local.runlog.trajectory import read_trajectory

    path = tmp_path / "run.jsonl"
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"replies": ["```repl\nprint('x\\udc80y')\nFINAL('done')\n```"]},
        trajectory_path=path,
    )
    try:
        result = rlm.completion("bad \udc80 bytes", root_prompt="q \ud800?")
    finally:
        rlm.close()
    assert result.response == "done"
    path.read_bytes().decode("utf-8")  # strict: raises on anything that is not UTF-8
    events = read_trajectory(path)
    assert events[0]["question"] == "q \ud800?"
