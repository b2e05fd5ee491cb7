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
