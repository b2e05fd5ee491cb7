"""The session's integrity without any escape: code of the model runs only inside its own cell, REPL
names are exactly right when each cell starts, only the channel reaches the protocol pipe, text leaving
the worker is valid UTF-8, and big values are capped in the worker and refused early."""

from __future__ import annotations

import time

import pytest

from rlm_local.sandbox import Limits, Sandbox, SandboxError

POISON_GEN = """
def poisoner():
    try:
        yield 1
    finally:
        global context, llm_query
        FINAL('spoofed')
        context = 'poisoned'
        llm_query = lambda p: 'attacker text'
        print('finally ran')
"""


def _valid_utf8(*texts: str | None) -> bool:
    for t in texts:
        if t is not None:
            t.encode("utf-8")  # raises on a lone surrogate
    return True


def test_generator_finally_runs_inside_its_own_cell_and_cannot_poison_the_next(make_sandbox):
    sb = make_sandbox(context="the real context")
    assert sb.run(POISON_GEN).error is None
    # rebinding a stub to a suspended generator: restoring the stub frees it, so its finally runs
    r = sb.run("llm_query = poisoner()\nnext(llm_query)")
    assert r.error is None, r
    assert "finally ran" in r.stdout and r.final == "spoofed"  # inside the cell that freed it
    r = sb.run("print(context)\nprint(llm_query('q'))")
    assert r.final is None
    assert r.stdout == "the real context\nanswer to: q\n", r


def test_cyclic_garbage_with_a_generator_is_collected_inside_the_cell(make_sandbox):
    sb = make_sandbox(context="ctx")
    assert sb.run(POISON_GEN).error is None
    r = sb.run("g = poisoner()\nnext(g)\nholder = [g]\nholder.append(holder)\ndel g, holder\nprint('end of cell')")
    assert r.error is None and "end of cell" in r.stdout and "finally ran" in r.stdout, r
    r = sb.run("print(context, llm_query('x'))")
    assert r.stdout == "ctx answer to: x\n" and r.final is None, r


def test_the_names_a_cell_rebinds_are_back_before_the_next_one(make_sandbox):
    sb = make_sandbox(context="ctx")
    r = sb.run("context = 'mi' + 'ne'\nFINAL = print\nllm_query_batched = [None]\nprint(context)")
    notes, _, printed = r.stdout.rpartition("]\n")
    assert printed == "mine\n"
    # The cell is told, at the top of its output, which names were rebound and restored.
    assert "`context` is a reserved REPL name: your cell assigned a str of 4 characters to it" in notes
    assert "holds the real document (a str of 3 characters)" in notes
    assert "`FINAL` is a reserved" in notes and "`llm_query_batched` is a reserved" in notes
    r = sb.run("context = 'a literal is skipped'\nprint(context)")
    assert r.stdout.endswith("]\nctx\n") and "line 1 of your cell (`context = ...`) was skipped" in r.stdout
    assert "llm_query`" not in notes.replace("`llm_query_batched`", "")  # untouched names are not mentioned
    r = sb.run("print(context)\nFINAL('ok')\nprint(llm_query_batched(['a']))")
    assert r.stdout == "ctx\n['answer to: a']\n" and r.final == "ok", r


def test_only_document_literals_are_skipped_and_line_numbers_hold_past_form_feeds(make_sandbox):
    # A dict context's other names are the model's to initialise: `summary = ""` runs (then is restored).
    sb = make_sandbox(context={"records": "alice\nbob", "summary": "Q3 summary."})
    r = sb.run('summary = ""\nfor n in records.splitlines():\n    summary += n.upper() + ";"\nprint(summary)')
    assert r.error is None and r.stdout.endswith("]\nALICE;BOB;\n") and "was skipped" not in r.stdout, r
    # A form feed (text pasted from a PDF) must not move the skipped line: the cell still compiles.
    sb = make_sandbox(context="ctx")
    r = sb.run('s = "page1\x0cpage2"\ncontext = "made up"\nprint(len(s), context)')
    assert r.error is None and r.stdout.endswith("]\n11 ctx\n") and "line 2 of your cell" in r.stdout, r


def test_deleting_a_reserved_name_is_told_and_undone(make_sandbox):
    sb = make_sandbox(context="the real document")
    r = sb.run("del context\nx = 1")
    assert r.stdout.startswith("[note: `context` is a reserved REPL name: your cell deleted it;"), r
    r = sb.run("print(context)")
    assert r.stdout == "the real document\n", r  # and no note when nothing was rebound


def test_code_that_keeps_fighting_the_restore_is_stopped_and_rolled_back(make_sandbox):
    sb = make_sandbox(context="ctx")
    assert sb.run("kept = 41").error is None
    fighter = (
        "def fight():\n"
        "    try:\n"
        "        yield 1\n"
        "    finally:\n"
        "        global llm_query\n"
        "        nxt = fight()\n"
        "        next(nxt)\n"
        "        llm_query = nxt\n"
        "kept = 42\n"
        "llm_query = fight()\n"
        "next(llm_query)"
    )
    r = sb.run(fighter)
    assert r.restored and r.error and "kept running after the cell ended" in r.error, r
    r = sb.run("print(kept, llm_query('q'))")
    assert r.stdout == "41 answer to: q\n", r


def test_re_debug_output_lands_in_the_cell_and_the_session_survives(make_sandbox):
    sb = make_sandbox()
    assert sb.run("kept = 'still here'").error is None
    r = sb.run(
        "import re\np = re.compile('a+b', 128)  # re.DEBUG by value: the name is removed, the flag still works\nprint('compiled')"
    )
    assert r.error is None and not r.restored, r
    assert "LITERAL" in r.stdout and "compiled" in r.stdout
    assert sb.run("print(kept)").stdout == "still here\n"


def test_text_leaving_the_worker_is_valid_utf8(make_sandbox):
    sb = make_sandbox()
    r = sb.run("s = 'a\\ud800b'\nprint(s)\nFINAL(s + '\\udfff')")
    assert _valid_utf8(r.stdout, r.final) and "\ufffd" in r.stdout and r.final == "a\ufffdb\ufffd", r
    r = sb.run("raise ValueError('bad \\udc80 text')")
    assert _valid_utf8(r.error) and "\ufffd" in r.error, r
    r = sb.read_variable("s")
    assert r.value == "a\ufffdb", r


def test_huge_final_and_huge_error_messages_are_capped_in_the_worker(make_sandbox):
    sb = make_sandbox(wall_seconds=20, max_final_chars=100_000)
    t0 = time.monotonic()
    r = sb.run("FINAL('\\x01' * 20_000_000)")
    assert time.monotonic() - t0 < 10 and r.error is None, r
    assert len(r.final) < 100_200 and "final answer truncated" in r.final
    t0 = time.monotonic()
    r = sb.run("raise ValueError('\\x01' * 20_000_000)")
    assert time.monotonic() - t0 < 10 and len(r.error) <= Limits().max_error_chars, len(r.error)


def test_empty_items_count_against_sub_call_caps(make_sandbox):
    calls = []
    sb = Sandbox(context="x", rlm_handler=lambda p, c: calls.append(c) or "child", limits=Limits(max_call_items=1000))
    try:
        t0 = time.monotonic()
        r = sb.run("rlm_query('q', context=[''] * 3_000_000)")
        assert r.error and "too many items" in r.error, r
        assert time.monotonic() - t0 < 10 and calls == []
        r = sb.run("llm_query_batched([''] * 5000)")
        assert r.error and "too many prompts" in r.error, r
        assert sb.run("print(rlm_query('q', context=['a', '']))").stdout == "child\n"
    finally:
        sb.close()


def test_read_variable_is_bounded_like_a_cell(make_sandbox):
    sb = make_sandbox(wall_seconds=1.5)
    assert (
        sb.run(
            "class Slow:\n    def __str__(self):\n        while True:\n            pass\nslow = Slow()\nok = {'n': 2**80, 'l': [1, 'a']}"
        ).error
        is None
    )
    r = sb.read_variable("slow")
    assert r.timed_out and r.restored, r
    assert sb.read_variable("ok").value == {"n": str(2**80), "l": [1, "a"]}
    assert "no variable" in sb.read_variable("missing").error
    assert "no variable" in sb.read_variable("_getattr_").error


def test_run_raises_only_sandbox_error_on_internal_failures(make_sandbox, monkeypatch):
    sb = make_sandbox()
    monkeypatch.setattr(type(sb._worker), "read", lambda self, deadline: (_ for _ in ()).throw(KeyError("bug")))
    with pytest.raises(SandboxError, match="KeyError"):
        sb.run("1")
    monkeypatch.undo()
    assert sb.run("print(1)").stdout.endswith("1\n")  # a fresh worker, with a note about the restart
