"""The parent-side interface the RLM loop codes against: contexts, sub-calls, FINAL, errors, output,
lifecycle, and many sessions side by side."""

from __future__ import annotations

import glob
import os
import threading
import time

import pytest

from rlm_local.sandbox import CellResult, Limits, Sandbox, SandboxError


def test_str_context_and_echo(make_sandbox):
    sb = make_sandbox(context="abc")
    r = sb.run("print(len(context))\ncontext.upper()")
    assert isinstance(r, CellResult)
    assert r.stdout == "3\n'ABC'\n" and r.error is None and r.final is None
    assert not r.timed_out and not r.restored and r.seconds > 0


def test_list_context(make_sandbox):
    sb = make_sandbox(context=["first", "second"])
    assert sb.run("print(len(context), context_0, context_1)").stdout == "2 first second\n"


def test_dict_context(make_sandbox):
    sb = make_sandbox(context={"report": "R", "notes 2": "N", "_hidden": "H", "llm_query": "X"})
    assert sb.run("print(report, sorted(context))").stdout == "R ['_hidden', 'llm_query', 'notes 2', 'report']\n"
    assert "NameError" in sb.run("notes").error
    assert sb.run("print(llm_query('q'))").stdout.startswith("answer to")


def test_bad_context_rejected():
    with pytest.raises(TypeError):
        Sandbox(context=[1, 2])


def test_context_handed_over_once_and_not_kept(make_sandbox):
    before = set(glob.glob("/tmp/rlm-sandbox-ctx-*"))
    text = "x" * 100_000 + "\udcff"  # a lone surrogate survives the trip
    sb = make_sandbox(context=text)
    assert set(glob.glob("/tmp/rlm-sandbox-ctx-*")) <= before
    links = []
    for fd in os.listdir(f"/proc/{sb.pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{sb.pid}/fd/{fd}"))
        except FileNotFoundError:  # closed between the listing and the read: not held
            pass
    assert not any("memfd" in link or "rlm-sandbox-ctx" in link for link in links), links
    assert sb.run("print(len(context), context[-1] == chr(0xdcff))").stdout == "100001 True\n"


def test_llm_handler_gets_prompts_and_errors_are_readable(make_sandbox):
    seen = []

    def handler(prompts):
        seen.append(list(prompts))
        if prompts[0] == "boom":
            raise ValueError("engine exploded at /secret/host/path.py")
        return [p[::-1] for p in prompts]

    sb = make_sandbox(llm_handler=handler)
    assert sb.run("llm_query('abc')").stdout == "'cba'\n"
    assert sb.run("llm_query_batched(['ab', 'cd'])").stdout == "['ba', 'dc']\n"
    assert seen == [["abc"], ["ab", "cd"]]
    r = sb.run("try:\n    llm_query('boom')\nexcept RuntimeError as e:\n    print('caught', e)")
    assert r.stdout.startswith("caught ValueError: engine exploded") and "Traceback" not in r.stdout
    r = sb.run("llm_query(42)")
    assert "TypeError" in r.error and "must be a str" in r.error


def test_malformed_handler_answer(make_sandbox):
    sb = make_sandbox(llm_handler=lambda ps: ["only one"])
    assert "malformed" in sb.run("llm_query_batched(['a', 'b'])").error


def test_rlm_query_handler_and_fallback(make_sandbox):
    calls = []
    sb = make_sandbox(rlm_handler=lambda p, c: calls.append((p, c)) or f"rlm:{p}")
    assert sb.run("rlm_query('q', context=['a', 'b'])").stdout == "'rlm:q'\n"
    assert calls == [("q", ["a", "b"])]
    assert "TypeError" in sb.run("rlm_query('q', context=[1])").error
    plain = make_sandbox()
    assert plain.run("rlm_query('q')").stdout == "'answer to: q'\n"


def test_final_and_final_var(make_sandbox):
    sb = make_sandbox()
    assert sb.run("FINAL(42)").final == "42"
    assert sb.run("x = [1, 2]").final is None
    assert sb.run("FINAL_VAR('x')").final == "[1, 2]"
    assert sb.run('FINAL_VAR("x")').final == "[1, 2]"
    r = sb.run("FINAL_VAR('y')")
    assert r.final is None and "FINAL_VAR: no variable named 'y'; define it first" in r.error
    assert "variable NAME" in sb.run("FINAL_VAR(x)").error


def test_reserved_names_survive_reassignment(make_sandbox):
    sb = make_sandbox(context="ctx")
    assert sb.run("FINAL = 1\nllm_query = None\ncontext = 'changed'\nSHOW_VARS = 3").error is None
    r = sb.run("FINAL_VAR('context')\nprint(llm_query('p'))")
    assert r.final == "ctx" and r.stdout.startswith("answer to")
    assert sb.run("FINAL('ok')").final == "ok"


def test_show_vars(make_sandbox):
    sb = make_sandbox(context="abc")
    sb.run("import re\nitems = [1, 2]\ndef helper():\n    pass")
    out = sb.run("SHOW_VARS()").stdout
    assert "items: list (len 2)" in out and "context: str (len 3)" in out and "re: module" in out
    assert "helper: function" in out and "llm_query" not in out


def test_readable_errors_without_host_paths(make_sandbox):
    sb = make_sandbox()
    r = sb.run("a = 1\nb = 2\nprint(x)")
    assert r.error == "NameError: name 'x' is not defined (line 3)"
    r = sb.run("import os")
    assert r.error.startswith("ImportError: module 'os' is not available in the sandbox; allowed: re, json")
    r = sb.run("def f(:\n  pass")
    assert "SyntaxError" in r.error and "Line 1" in r.error
    r = sb.run("import json\njson.loads('{bad')")
    assert r.error.startswith("JSONDecodeError") and "/work" not in r.error and ".py" not in r.error
    r = sb.run("def g(d):\n    return d['k']\n\ng({})")
    assert r.error.endswith("KeyError: 'k' (line 2)") and "in g: return d['k']" in r.error
    r = sb.run("def rec(n):\n    return rec(n + 1)\nrec(0)")
    assert "RecursionError" in r.error and r.error.count("\n") < 15


def test_prints_inside_functions_are_kept(make_sandbox):
    sb = make_sandbox()
    r = sb.run("def f():\n    print('inner')\n    return 2\nprint('outer', f())")
    assert r.stdout == "inner\nouter 2\n"


def test_output_truncation_marker(make_sandbox):
    sb = make_sandbox(output_chars=100)
    r = sb.run("print('y' * 250)")
    assert r.stdout.startswith("y" * 100) and "... [output truncated: 151 more characters]" in r.stdout


def test_close_is_idempotent_and_kills_worker(make_sandbox):
    sb = make_sandbox()
    pid = sb.pid
    sb.close()
    sb.close()
    with pytest.raises(SandboxError):
        sb.run("1")
    time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_garbage_collected_sandbox_leaves_no_worker():
    sb = Sandbox(context="x")
    pgid = sb._worker.pgid
    del sb
    import gc

    gc.collect()
    time.sleep(0.2)
    alive = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(p) == pgid and _state(p) != "Z"]
    assert alive == []


def _stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _pgid(pid):
    s = _stat(pid)
    return int(s[2]) if s else None


def _state(pid):
    s = _stat(pid)
    return s[0] if s else None


def test_worker_environment_is_clean(make_sandbox):
    os.environ["RLM_CANARY"] = "visible?"
    try:
        sb = make_sandbox()
    finally:
        del os.environ["RLM_CANARY"]
    with open(f"/proc/{sb.pid}/environ", "rb") as f:
        assert b"RLM_CANARY" not in f.read()
    # /dev/null on 0, the capture pipe on 1 and 2 and its read end, the two protocol pipes, and the
    # snapshot's release pipe: nothing inherited from the parent (right after start-up the snapshot's fork
    # briefly holds one more pipe end: wait for it to settle)
    deadline = time.monotonic() + 5
    while len(fds := os.listdir(f"/proc/{sb.pid}/fd")) > 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fds) <= 7, [os.readlink(f"/proc/{sb.pid}/fd/{f}") for f in fds]


def test_sixteen_sessions_in_threads_do_not_mix():
    errors = []

    def worker(i):
        try:
            handler = lambda ps: [f"{i}:{p}" for p in ps]  # noqa: E731
            with Sandbox(context=f"session-{i}", llm_handler=handler, limits=Limits(wall_seconds=30)) as sb:
                for j in range(5):
                    r = sb.run(f"v = {j}\nprint(context, v, llm_query('p{j}'))")
                    if r.stdout != f"session-{i} {j} {i}:p{j}\n":
                        errors.append((i, j, r))
        except Exception as e:  # pragma: no cover - reported below
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
