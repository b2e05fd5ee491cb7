"""The parent treats the worker as hostile: a worker that lies, floods or stalls must never make the
parent crash, hang, exceed limits, or signal processes outside the worker's own session."""

from __future__ import annotations

import os
import time

import pytest

import rlm_local.sandbox.launch as launch
from rlm_local.sandbox import Limits, Sandbox
from rlm_local.sandbox.limits import validate_call
from rlm_local.sandbox.worker import protocol

FAKE_WORKER = r"""
import json, os, sys, time
def send(m, parts=()):
    blobs = [p.encode() for p in parts]
    head = dict({"pid": os.getpid(), "snapshot": None, "id": CELL.get("id")}, **m, parts=[len(b) for b in blobs])
    os.write(1, (json.dumps(head) + "\n").encode() + b"".join(blobs))
CELL = {}
def read():
    header = json.loads(sys.stdin.buffer.readline() or "null")
    while header is not None and header.get("op") == "go":  # the parent's leave to fork a snapshot
        header = json.loads(sys.stdin.buffer.readline() or "null")
    if header is None:
        return None
    if header.get("op") == "run":
        CELL["id"] = header.get("id")
    sys.stdin.buffer.read(sum(header.get("parts", [])))
    return header
send({"type": "waiting"})
read()
send({"type": "ready", "pid": os.getpid(), "snapshot": None, "hardening": []})
mode = os.environ.get("FAKE_MODE", sys.argv[-1])
while True:
    if read() is None:
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
    elif mode == "nested":  # JSON nested past the parser's recursion limit
        os.write(1, b"[" * 200_000 + b"]" * 200_000 + b"\n")
        time.sleep(60)
    elif mode == "trickle":  # announces a result, then sends it a byte at a time, forever
        os.write(1, b'{"type":"result","present":[true,false,false,false],"parts":[4000]}\n')
        while True:
            os.write(1, b"\x01")
            time.sleep(0.01)
    elif mode == "huge_result":  # a result far over its caps
        send({"type": "result", "present": [False, False, True, False]}, ["", "", "\x01" * 5_000_000, ""])
        time.sleep(60)
    elif mode == "many_items":  # a sub-call with more items than allowed, empty ones
        send({"type": "call", "kind": "rlm", "prompts": 1, "contexts": [["list", 50_000]]}, ["q"] + [""] * 50_000)
        time.sleep(60)
    elif mode == "calls":   # asks for far more sub-calls than allowed
        send({"type": "call", "kind": "llm", "prompts": 10, "contexts": None}, ["p"] * 10)
        read()
        send({"type": "result", "present": [True, False, False, False]}, ["y" * 2_000, "", "", ""])
"""


@pytest.fixture
def fake_worker(tmp_path, monkeypatch):
    def use(mode: str):
        path = tmp_path / f"fake_{mode}.py"
        path.write_text(FAKE_WORKER.replace("sys.argv[-1]", repr(mode)))
        monkeypatch.setattr(launch, "WORKER_PATH", str(path))
        # the real worker is used again for restarts only if the test restores the path

    return use


def test_lying_pid_never_signals_the_parent(fake_worker):
    fake_worker("liar")
    sb = Sandbox(context="x", limits=Limits(wall_seconds=1, cpu_seconds=1))
    try:
        r = sb.run("1")  # unexpected 'restored' claiming our pid: never believed, the fake has no snapshot
        assert r.timed_out and not r.restored and "restarted" in r.error, r
        t0 = time.monotonic()
        r = sb.run("1")  # stalls -> wall timeout -> must not kill os.getpid()
        assert time.monotonic() - t0 < 30 and r.timed_out
    finally:
        sb.close()
    assert os.getpid() > 0  # still alive to assert anything at all


@pytest.mark.parametrize("mode", ["garbage", "flood", "nested"])
def test_garbage_and_floods_are_survived(fake_worker, mode):
    fake_worker(mode)
    sb = Sandbox(context="x", limits=Limits(wall_seconds=1, max_call_chars=1000))
    try:
        t0 = time.monotonic()
        r = sb.run("1")
        assert r.error and not r.restored and time.monotonic() - t0 < 30
    finally:
        sb.close()


@pytest.mark.parametrize(
    "mode,words",
    [
        ("trickle", "wall-clock"),
        ("huge_result", "more than the sandbox accepts"),
        ("many_items", "more than the sandbox accepts"),
    ],
)
def test_oversized_or_endless_messages_end_the_cell_in_time(fake_worker, mode, words):
    """Caps are checked from the header, before reading; a flood cannot outrun the wall deadline."""
    fake_worker(mode)
    sb = Sandbox(context="x", limits=Limits(wall_seconds=2, max_final_chars=1000, max_call_items=1000))
    try:
        t0 = time.monotonic()
        r = sb.run("1")
        took = time.monotonic() - t0
        assert r.error and words in r.error and r.timed_out, r
        assert took < 2 + launch_restart_allowance(), took
    finally:
        sb.close()


def launch_restart_allowance() -> float:
    # the fake worker has no snapshot, so the parent waits RESTORE_WAIT_SECONDS and restarts it
    import rlm_local.sandbox.sandbox as session

    return session.RESTORE_WAIT_SECONDS + 10


def test_parent_caps_and_output_checks_hold_against_the_worker(fake_worker):
    fake_worker("calls")
    seen = []
    sb = Sandbox(
        context="x",
        llm_handler=lambda ps: seen.extend(ps) or ["a"] * len(ps),
        limits=Limits(max_prompts_per_call=4, output_chars=100),
    )
    try:
        r = sb.run("anything")
        assert seen == []  # the 10-prompt call was refused in the parent
        assert len(r.stdout) < 200 and "[output truncated" in r.stdout
        assert r.final is None  # a non-str final is dropped
    finally:
        sb.close()


@pytest.mark.parametrize(
    "kind,prompts,contexts",
    [
        ("llm", [], None),
        ("shell", ["p"], None),
        ("llm", ["p"] * 9, None),
        ("llm", ["x" * 101], None),
        ("llm", ["p"], ["context for llm_query"]),
        ("rlm", ["a", "b"], [None]),
        ("rlm", ["a"], None),
        ("rlm", ["a"], [["y" * 300]]),
        ("rlm", ["a"], [[""] * 1000]),  # empty items count
        ("rlm", ["a", "b"], [[""] * 400, [""] * 400]),
        ("rlm", ["a"], [{str(i): "" for i in range(1000)}]),
    ],
)
def test_validate_call_rejects(kind, prompts, contexts):
    with pytest.raises(ValueError):
        validate_call(
            kind,
            prompts,
            contexts,
            Limits(max_prompts_per_call=8, max_prompt_chars=100, max_call_chars=250, max_call_items=500),
        )


@pytest.mark.parametrize(
    "header,parts",
    [
        ({"prompts": 3, "contexts": None}, ["a"]),
        ({"prompts": "1", "contexts": None}, ["a"]),
        ({"prompts": 1, "contexts": None}, ["a", "extra"]),
        ({"prompts": 1, "contexts": [["str", 2]]}, ["a", "x", "y"]),
        ({"prompts": 1, "contexts": [["dict", 1]]}, ["a", "k"]),
        ({"prompts": 1, "contexts": [["pickle", 1]]}, ["a", "x"]),
        ({"prompts": 1, "contexts": [["list", 5]]}, ["a", "x"]),
        ({"prompts": 2, "contexts": [["none", 0]]}, ["a", "b"]),
        ({"prompts": 1, "contexts": [["list", -1]]}, ["a"]),
    ],
)
def test_split_call_rejects_malformed(header, parts):
    with pytest.raises(ValueError):
        protocol.split_call(header, parts)


def test_validate_call_accepts():
    prompts, ctxs = protocol.split_call({"prompts": 2, "contexts": [["dict", 2], ["none", 0]]}, ["a", "b", "k", "v"])
    validate_call("rlm", prompts, ctxs, Limits())
    assert (prompts, ctxs) == (["a", "b"], [{"k": "v"}, None])
