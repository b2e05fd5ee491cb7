"""What the run object builds on: batched child runs, tools, contexts added to a live session, a hard
deadline that counts sub-call waits, and one error base."""

from __future__ import annotations

import time

import pytest

from rlm_local.errors import Error
from rlm_local.sandbox import Limits, Sandbox, SandboxError


def lookup(key, default=None):
    return {"alpha": 1}.get(key, default)


@pytest.fixture
def sb():
    box = Sandbox(
        context="base",
        llm_handler=lambda ps: [f"L:{p}" for p in ps],
        rlm_handler=lambda p, c: f"R:{p}:{c!r}",
        tools={"lookup": lookup, "config": {"k": [1, 2]}},
        limits=Limits(wall_seconds=5, cpu_seconds=5),
    )
    yield box
    box.close()


def test_sandbox_error_is_an_rlm_local_error():
    assert issubclass(SandboxError, Error)


def test_rlm_query_batched_sends_one_call_with_a_context_per_prompt(sb):
    r = sb.run("print(rlm_query_batched(['p1', 'p2'], ['c1', {'x': 'y'}]))\nprint(rlm_query_batched(['solo']))")
    assert r.error is None and r.calls == 3, r
    assert r.stdout == "[\"R:p1:'c1'\", \"R:p2:{'x': 'y'}\"]\n['R:solo:None']\n"
    r = sb.run("rlm_query_batched(['a', 'b'], ['only one'])")
    assert "2 prompts but 1 contexts" in r.error


def test_a_batch_handler_gets_the_whole_batch():
    seen = []
    box = Sandbox(context="x", rlm_batch_handler=lambda ps, cs: seen.append((ps, cs)) or [p.upper() for p in ps])
    try:
        assert box.run("print(rlm_query_batched(['a', 'b'], [None, ['d']]))").stdout == "['A', 'B']\n"
        assert seen == [(["a", "b"], [None, ["d"]])]
    finally:
        box.close()


def test_tools_call_the_parent_with_json_and_data_is_read_only(sb):
    r = sb.run("print(lookup('alpha'), lookup(key='zz', default=[3]), config['k'])")
    assert r.stdout == "1 [3] (1, 2)\n", r
    assert "cannot modify" in sb.run("config['k'] = 3").error
    assert "JSON data" in sb.run("lookup(object())").error
    assert "config: mappingproxy" in sb.run("SHOW_VARS()").stdout
    sb.run("lookup = 5")
    assert sb.run("print(lookup('alpha'))").stdout == "1\n"  # restored like the other REPL names


def test_a_failing_tool_gives_its_message_not_a_traceback():
    def broken(x):
        raise KeyError("no such record")

    box = Sandbox(context="x", tools={"broken": broken})
    try:
        r = box.run("broken(1)")
        assert "KeyError" in r.error and "no such record" in r.error and "Traceback (most" not in r.error
    finally:
        box.close()


@pytest.mark.parametrize("tools", [{"_hidden": 1}, {"class": 1}, {"obj": object()}])
def test_bad_tools_are_refused(tools):
    with pytest.raises((ValueError, TypeError)):
        Sandbox(context="x", tools=tools)


def test_added_contexts_are_variables_restored_every_cell_and_survive_restore_and_restart(sb):
    assert sb.add_context("second doc") == "context_1"
    assert sb.add_context([{"role": "user", "content": "hi"}], name="history") == "history"
    assert sb.run("print(context_1, history[0]['content'])").stdout == "second doc hi\n"
    sb.run("context_1 = 'overwritten'")
    assert sb.run("print(context_1)").stdout == "second doc\n"
    assert sb.run("while True: pass", wall_seconds=1).restored  # the snapshot holds them too
    assert sb.run("print(context_1)").stdout == "second doc\n"
    sb._discard_worker()  # a restart re-sends them
    assert sb.run("print(context_1, len(history))").stdout.endswith("second doc 1\n")
    assert sb.add_context("newest", as_context=True) == "context_2"  # context_2 and context, one value
    assert sb.run("print(context_2 is context)").stdout == "True\n"
    assert sb.add_context(["q1", "q2"], name="history") == "history"
    assert sb.run("print(context, history)").stdout == "newest ['q1', 'q2']\n"
    assert sb.run("while True: pass", wall_seconds=1).restored
    assert sb.run("print(context, len(history))").stdout == "newest 2\n"
    with pytest.raises(ValueError):
        sb.add_context("x", name="llm_query")
    with pytest.raises(ValueError):
        sb.add_context("x", name="lookup")
    with pytest.raises(ValueError):
        sb.add_context("x", name="_private")
    with pytest.raises(TypeError):
        sb.add_context(object())


def test_a_hard_deadline_counts_time_waiting_on_sub_calls():
    def slow(prompts):
        time.sleep(0.8)
        return ["ok"] * len(prompts)

    box = Sandbox(context="x", llm_handler=slow, limits=Limits(wall_seconds=30, cpu_seconds=30))
    try:
        box.run("kept = 1")
        t0 = time.monotonic()
        r = box.run("kept = 2\nllm_query('q')\nwhile True:\n    pass", deadline=time.monotonic() + 1.5)
        took = time.monotonic() - t0
        assert r.restored and "time budget" in r.error, r
        assert took < 2.5, took
        assert box.run("print(kept)").stdout == "1\n"  # rolled back, variables kept
    finally:
        box.close()
