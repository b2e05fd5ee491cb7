"""The parent treats the worker as hostile: a worker that lies, floods or stalls must never make the
parent crash, hang, exceed limits, or signal processes outside the worker's own session."""
from __future__ import annotations

import os
import time

import pytest

import rlm_local.sandbox.session as session
from rlm_local.sandbox import Limits, Sandbox
from rlm_local.sandbox.limits import validate_call

FAKE_WORKER = r'''
import json, os, sys, time
def send(m):
    os.write(1, (json.dumps(m) + "\n").encode())
sys.stdin.buffer.readline()
send({"type": "ready", "pid": os.getpid(), "hardening": []})
mode = os.environ.get("FAKE_MODE", sys.argv[-1])
while True:
    line = sys.stdin.buffer.readline()
    if not line:
        break
    if mode == "liar":      # claims a restore, naming the parent's pid as its own, then stalls
        send({"type": "restored", "pid": os.getppid()})
        time.sleep(60)
    elif mode == "garbage":
        os.write(1, b"\x00\xff not json\n")
        time.sleep(60)
    elif mode == "flood":   # an endless line without a newline
        while True:
            os.write(1, b"x" * 65536)
    elif mode == "calls":   # asks for far more sub-calls than allowed
        send({"type": "call", "kind": "llm", "prompts": ["p"] * 10})
        sys.stdin.buffer.readline()
        send({"type": "result", "stdout": "y" * 10_000, "error": None, "final": 5})
'''


@pytest.fixture
def fake_worker(tmp_path, monkeypatch):
    def use(mode: str):
        path = tmp_path / f"fake_{mode}.py"
        path.write_text(FAKE_WORKER.replace('sys.argv[-1]', repr(mode)))
        monkeypatch.setattr(session, "WORKER_PATH", str(path))
        # the real worker is used again for restarts only if the test restores the path
    return use


def test_lying_pid_never_signals_the_parent(fake_worker):
    fake_worker("liar")
    sb = Sandbox(context="x", limits=Limits(wall_seconds=1, cpu_seconds=1))
    try:
        r = sb.run("1")          # unexpected 'restored' claiming our pid
        assert r.timed_out and r.restored
        t0 = time.monotonic()
        r = sb.run("1")          # stalls -> wall timeout -> must not kill os.getpid()
        assert time.monotonic() - t0 < 30 and r.timed_out
    finally:
        sb.close()
    assert os.getpid() > 0  # still alive to assert anything at all


def test_garbage_and_floods_are_survived(fake_worker):
    for mode in ("garbage", "flood"):
        fake_worker(mode)
        sb = Sandbox(context="x", limits=Limits(wall_seconds=1, max_call_chars=1000))
        try:
            t0 = time.monotonic()
            r = sb.run("1")
            assert r.error and not r.restored and time.monotonic() - t0 < 30
        finally:
            sb.close()


def test_parent_caps_and_output_checks_hold_against_the_worker(fake_worker):
    fake_worker("calls")
    seen = []
    sb = Sandbox(context="x", llm_handler=lambda ps: seen.extend(ps) or ["a"] * len(ps),
                 limits=Limits(max_prompts_per_call=4, output_chars=100))
    try:
        r = sb.run("anything")
        assert seen == []                       # the 10-prompt call was refused in the parent
        assert len(r.stdout) < 200 and "[output truncated" in r.stdout
        assert r.final is None                   # a non-str final is dropped
    finally:
        sb.close()


@pytest.mark.parametrize("msg", [
    {"kind": "llm", "prompts": "not a list"},
    {"kind": "llm", "prompts": []},
    {"kind": "llm", "prompts": [1, 2]},
    {"kind": "shell", "prompts": ["p"]},
    {"kind": "llm", "prompts": ["p"] * 9},
    {"kind": "llm", "prompts": ["x" * 101]},
    {"kind": "rlm", "prompts": ["a", "b"]},
    {"kind": "rlm", "prompts": ["a"], "context": {"k": 1}},
    {"kind": "rlm", "prompts": ["a"], "context": ["y" * 300]},
])
def test_validate_call_rejects(msg):
    with pytest.raises((ValueError, TypeError)):
        validate_call(msg, Limits(max_prompts_per_call=8, max_prompt_chars=100, max_call_chars=250))


def test_validate_call_accepts():
    kind, prompts, ctx = validate_call({"kind": "rlm", "prompts": ["a"], "context": {"k": "v"}}, Limits())
    assert (kind, prompts, ctx) == ("rlm", ["a"], {"k": "v"})
