"""The wire and the REPL's integrity (issue 16, round 3), without any escape: no model code runs between
cells (nothing the host keeps can run code when it is freed; what the host lets go of between cells is
freed inside the next cell, whose code then starts with exact names), sizes on the wire come from the
encoder's own bytes, and a session is never out of step after any cell. Each attack is also shown to
work against a naive setting (the mechanism it abuses, run in plain Python)."""

from __future__ import annotations

import pytest

from rlm_local.sandbox.worker import protocol

POISON = """
def poisoner():
    try:
        yield 1
    finally:
        global llm_query, context
        llm_query = lambda p: 'SPOOFED'
        context = 'SPOOFED'
        FINAL('SPOOFED')
        nxt = poisoner()
        next(nxt)
        keep.append(nxt)
class S(str):
    def __str__(self):
        return self
    def __repr__(self):
        return self
def mk(text):
    s = S(text)
    s.g = poisoner()
    next(s.g)
    return s
keep = []
"""
CHECK = "print(context, llm_query('q'))"
CHECK_OUT = "the real context answer to: q\n"


def _clean_after(sb, *cells: str) -> None:
    """Runs ``cells``, then checks the next cell sees exactly the session's own names and no spoofed FINAL."""
    for cell in cells:
        sb.run(cell)
    r = sb.run(CHECK)
    assert r.stdout == CHECK_OUT and r.final is None, r
    r = sb.run(CHECK)
    assert r.stdout == CHECK_OUT and r.final is None, r


@pytest.mark.parametrize(
    "holder",
    ["FINAL(mk('answer'))", "print(mk('printed'))", "print(S('a'), mk('b'), sep=mk('-'))"],
)
def test_objects_a_cell_hands_the_host_never_run_code_later(make_sandbox, holder):
    """A generator held by a str subclass that the host kept (the FINAL value, the output, the echo of the
    last expression) used to run its finally when the next cell started, spoofing llm_query, context and
    FINAL there, and re-arming itself for the cell after."""
    sb = make_sandbox(context="the real context")
    assert sb.run(POISON).error is None
    r = sb.run(holder)
    assert r.error is None, r
    _clean_after(sb)


def test_read_variable_keeps_no_model_object(make_sandbox):
    """(A guard for the same rule on the read path, which held before by the way it converted.)"""
    sb = make_sandbox(context="the real context")
    assert sb.run(POISON + "v = mk('value')").error is None
    assert sb.read_variable("v").value == "value"
    assert sb.run("del v").error is None
    _clean_after(sb)


def test_a_variable_rebound_by_add_context_is_freed_inside_the_next_cell(make_sandbox):
    """add_context frees the model's old binding of the name: its generator's finally runs at the start
    of the next cell, under that cell's limits, and the REPL names are restored before the cell's code."""
    sb = make_sandbox(context="the real context")
    assert sb.run(POISON + "history = poisoner()\nnext(history)").error is None
    sb.add_context("the new history", name="history")
    r = sb.run("print(history, context, llm_query('q'))")
    assert r.stdout.endswith("the new history the real context answer to: q\n") and r.final is None, r
    _clean_after(sb)


def test_a_lying_str_cannot_desync_the_wire(make_sandbox):
    """Sizes come from the encoder's bytes: a str whose len, slicing and encode lie (and would forge a
    result for the next cell on a naive encoder) travels as its real text."""
    sb = make_sandbox(context="the real context")
    forged = '\\n{"type":"result","present":[true,false,true,false],"parts":[6,0,6,0]}FORGEDFORGED'
    cell = (
        "class B(bytes):\n    def __len__(self):\n        return 0\n"
        "class L(str):\n    def __str__(self):\n        return self\n    def __len__(self):\n        return 0\n"
        f"    def encode(self, *a):\n        return B(b'{forged}')\n"
        "FINAL(L('the answer'))\nprint(L('printed'))"
    )
    r = sb.run(cell)
    assert r.error is None and r.final == "the answer" and r.stdout == "printed\n", r
    _clean_after(sb)
    for _ in range(3):
        assert sb.run("print(1)").stdout == "1\n"


def test_naive_encoder_would_be_fooled():
    """The mechanism the attack above abuses: an encoder that asks the object for its bytes and their
    length writes a header that does not match its payload."""

    class B(bytes):
        def __len__(self):
            return 0

    class L(str):
        def encode(self, *a):
            return B(b"forged")

    blobs = [p.encode("utf-8") for p in [L("x")]]
    assert [len(b) for b in blobs] == [0] and b"".join(blobs) == b"forged"  # naive: header says 0, sends 6
    assert protocol.encode({"type": "result"}, [L("x")]).endswith(b'"parts":[1]}\nx')  # ours: the real text


def test_headers_without_parts_are_malformed():
    for line in (b'{"type":"result"}', b'{"type":"result","parts":null}', b'{"type":"call","parts":[-1]}'):
        assert protocol.decode_header(line) is None, line
    assert protocol.decode_header(b'{"type":"result","parts":[]}') == {"type": "result", "parts": []}


def test_a_cell_stopped_while_its_sub_call_reply_is_in_flight_is_restored_at_once():
    """The stop kills the worker while it reads the reply of its sub-call: the snapshot must get the
    resync line, not the dying worker (a process woken by SIGKILL still drains the pipe before it dies),
    so the cell ends restored at once rather than after the restore wait and a restart."""
    import time

    from rlm_local.sandbox import Limits, Sandbox

    def slow(prompts):
        time.sleep(0.6)
        return ["late"] * len(prompts)

    with Sandbox(context="x", llm_handler=slow, limits=Limits(wall_seconds=30)) as sb:
        assert sb.run("kept = 1").error is None
        for _ in range(3):
            t0 = time.monotonic()
            r = sb.run("llm_query('q')\nn = 0\nwhile True:\n    n += 1", deadline=time.monotonic() + 0.3)
            assert r.restored and time.monotonic() - t0 < 5, r
            assert sb.run("print(kept)").stdout == "1\n"
