"""The session prelude: model-level source the worker runs once at session start, under the cell policy
and guards, whose top-level names become REPL names (restored after every cell, hidden from SHOW_VARS,
re-created by a restarted worker)."""

from __future__ import annotations

import pytest

from rlm_local.sandbox import Limits, Sandbox, SandboxError

PRELUDE = """
import re
def search(pattern, text=None):
    'Lines of the context that match pattern.'
    return [line for line in (text or context).splitlines() if re.search(pattern, line)]
WORDS = ('alpha', 'beta')
"""


@pytest.fixture
def sb():
    box = Sandbox(context="one alpha\ntwo\nthree alpha", prelude=PRELUDE, limits=Limits(wall_seconds=5, cpu_seconds=5))
    yield box
    box.close()


def test_prelude_names_are_usable_and_hidden_from_show_vars(sb):
    r = sb.run("print(search('alpha'), WORDS)\nmine = 1\nSHOW_VARS()")
    assert r.error is None, r
    first, *rows = r.stdout.splitlines()
    assert first == "['one alpha', 'three alpha'] ('alpha', 'beta')"
    assert "mine: int" in rows and not any(row.split(":")[0] in ("search", "WORDS", "re") for row in rows), rows


def test_rebinding_a_prelude_name_is_undone_with_a_note(sb):
    r = sb.run("search = 'mine'\ndel WORDS\nprint(search)")
    assert r.stdout.endswith("mine\n") and "`search` is a reserved REPL name" in r.stdout, r
    assert "`WORDS` is a reserved REPL name: your cell deleted it" in r.stdout
    r = sb.run("print(search('two'), WORDS)")
    assert r.stdout == "['two'] ('alpha', 'beta')\n", r


def test_prelude_code_runs_under_the_cell_policy():
    for bad, words in (
        ("import os", "not available in the sandbox"),
        ("x = ().__class__.__bases__", "invalid attribute name"),
        ("_private = 1", "invalid variable name"),
        ("def f(:\n    pass", "SyntaxError"),
        ("raise ValueError('prelude broke')", "ValueError: prelude broke"),
        ("context = 'replaced'", "rebinds names the REPL already defines: context"),
    ):
        with pytest.raises(SandboxError, match="prelude failed") as info:
            Sandbox(context="x", prelude=bad)
        assert words in str(info.value), (bad, str(info.value))


def test_prelude_is_bounded_by_the_cell_cpu_limit():
    with pytest.raises(SandboxError):
        Sandbox(context="x", prelude="while True:\n    pass", limits=Limits(cpu_seconds=1, start_seconds=20))


def test_prelude_names_survive_a_worker_restart_and_rollback():
    box = Sandbox(context="ctx", prelude=PRELUDE, limits=Limits(wall_seconds=1, cpu_seconds=1))
    try:
        r = box.run("while True:\n    pass")
        assert r.restored, r
        assert box.run("print(WORDS)").stdout == "('alpha', 'beta')\n"
        box._worker.kill()  # a crash outside a cell: the sandbox starts a new worker, which reruns the prelude
        assert "restarted" in box.run("1").stdout  # noticed before the next cell: a new worker, with a note
        assert box.run("print(search('ctx'), WORDS)").stdout == "['ctx'] ('alpha', 'beta')\n"
    finally:
        box.close()


def test_prelude_is_not_a_snapshot_variable(sb):
    """The service snapshots a session from SHOW_VARS; prelude names never appear there, and reading
    one as a variable still works for the host."""
    sb.run("answer = search('alpha')")
    listing = sb.run("SHOW_VARS()").stdout
    assert listing == "context: str (len 25)\nanswer: list (len 2)\n", listing
    assert sb.read_variable("WORDS").value == ["alpha", "beta"]


def test_prelude_functions_count_as_sandbox_code(sb):
    """Functions the prelude defines are the sandbox's own: storable on instances, readable back."""
    r = sb.run("class K:\n    pass\nk = K()\nk.f = search\nprint(k.f('two'))")
    assert r.error is None and r.stdout == "['two']\n", r
    r = sb.run("search('[')")
    assert r.error and "cell prelude, line" in r.error and "re.error" not in r.error[:3], r
