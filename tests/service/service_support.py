"""A scripted RLM service for tests: the root's reply depends on keywords in the question, sub-calls echo."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from pathlib import Path

from scripting import is_root, repl

from rlm_local.engines import Request
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.service import RLMConfig, ServiceConfig, create_service_app
from rlm_local.testing import BackgroundServer

RELEASE = threading.Event()  # the "slow" script's sub-calls wait on it
# Variables of every kind a snapshot must carry over exactly (the review's losses: int keys, inf, tuples, sets).
VARIABLES = """ints = {1: 'one', 2: (2, 'two'), (3, 4): frozenset({5})}
floats = [1.5, float('inf'), float('-inf'), -0.0, 1e300]
nested = {'a': [{1, 2}, (), set(), ({'deep': [(1,), {'k': None}]},)], None: True, 7.5: 'float key'}
shapes = ((1,), [[]], {}, frozenset(), 3 + 4j)
raw = b'\\x00bytes'
big = 10 ** 40
str = 'a str variable named str'
len = 5"""


def question(req: Request) -> str:
    """The question of this question (keywords start with '!'), without the session's earlier ones."""
    return req.messages[1]["content"].split("Now answer:")[-1].split("Context metadata")[0]


def script(req: Request) -> str:
    if req.prompt is not None:  # a bare /v1/completions call
        return f"sub:{req.prompt}"
    if not is_root(req):
        text = req.messages[-1]["content"]
        if text.startswith("slow"):
            RELEASE.wait(30)
        return f"sub:{text}"
    if any(m["role"] == "assistant" for m in req.messages):  # a later turn: answer from the output
        return "FINAL(second turn)"
    q = question(req)
    if "!remember" in q:
        return repl("memo = 'kept-' + str(len(context))\nFINAL(memo)")
    if "!recall" in q:
        return repl("FINAL(memo + ' ' + str(len(context)))")
    if "!slow" in q:
        return repl("for i in range(50):\n    llm_query('slow ' + str(i))\nFINAL('finished')")
    if "!batch" in q:
        n = q.split("!batch")[-1].split()[0]
        return repl(f"r = llm_query_batched(['part ' + str(i) for i in range({n})])\nFINAL(str(len(r)))")
    if "!child" in q:
        return repl("FINAL(rlm_query('inner question', context='inner context'))")
    if "!look" in q:
        return repl("print(len(str(context)))")
    if "!vars" in q:
        return repl(VARIABLES + "\nFINAL('set')")
    if "!show" in q:
        return repl("FINAL(repr([ints, floats, nested, shapes, raw, big, str, len]))")
    if "!define" in q:
        return repl("def helper():\n    return 1\nclass Box:\n    pass\nbox = Box()\nkept = 'plain'\nFINAL('defined')")
    if "!kept" in q:
        return repl("FINAL(kept)")
    if "!trap" in q:  # a str whose __len__ never returns: SHOW_VARS (in the snapshot) would call it
        return repl(
            "class S(str):\n    def __len__(self):\n        while True:\n            pass\ntrap = S('x')\nFINAL('set')"
        )
    return repl("FINAL(llm_query('echo ' + str(context)[-30:]))")


def make_config(tmp: Path, **kwargs) -> ServiceConfig:
    engine = ScriptedEngine(script, model_name="scripted-model")
    rlms = {
        "scripted-rlm": RLMConfig(name="scripted-rlm", engine=engine, budgets={"max_iterations": 4}),
        "deep-rlm": RLMConfig(name="deep-rlm", engine=engine, budgets={"max_iterations": 4, "max_depth": 2}),
    }
    return ServiceConfig(rlms=rlms, data_dir=tmp, **kwargs)


@contextmanager
def serving(config: ServiceConfig, **kwargs):
    app = create_service_app(config, **kwargs)
    try:
        with BackgroundServer(app) as url:
            yield url, app.state.service
    finally:
        app.state.service.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
