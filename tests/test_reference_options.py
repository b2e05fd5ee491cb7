"""The reference library's constructor arguments and result types, each with the reference's meaning
(rlm_local/options.py), driven by the scripted engine; README's parity table matches the code."""

from __future__ import annotations

import inspect
import threading
import time
from pathlib import Path
from unittest.mock import Mock

import pytest
from scripting import is_root, last_user, repl

from rlm_local import (
    RLM,
    CancellationError,
    Error,
    ErrorThresholdExceededError,
    ModelUsageSummary,
    RLMChatCompletion,
    RLMLogger,
    UsageSummary,
    defaults,
)
from rlm_local.engines import Request
from rlm_local.engines.client import ClientEngine
from rlm_local.engines.openai_http import OpenAIEngine
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.options import REFERENCE_ARGUMENTS, parity_table

DOC = "alpha beta gamma " * 20


def make(replies, **kwargs) -> tuple[RLM, ScriptedEngine]:
    engine = ScriptedEngine(replies)
    return RLM(backend="scripted", engine=engine, **kwargs), engine


def system_of(engine: ScriptedEngine) -> str:
    return next(r for r in engine.requests if is_root(r)).messages[0]["content"]


# ---- the table ---------------------------------------------------------------------------------------------
def test_every_reference_argument_is_taken_in_the_reference_order():
    ours = list(inspect.signature(RLM).parameters)
    names = [a.name for a in REFERENCE_ARGUMENTS]
    assert len(names) == 30 and ours[:30] == names  # positional use of the reference's arguments works too


def test_readme_parity_table_is_the_code_s():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = "<!-- parity-table: start -->", "<!-- parity-table: end -->"
    table = readme.split(start)[1].split(end)[0].strip()
    assert table == parity_table(), "README's parity table is stale: paste rlm_local.options.parity_table()"


def test_defaults_are_the_table_s():
    params = inspect.signature(RLM).parameters
    assert params["max_iterations"].default == defaults.MAX_ITERATIONS == 30
    assert params["output_limit"].default == defaults.OUTPUT_LIMIT
    assert params["compaction_threshold_pct"].default == defaults.COMPACTION_THRESHOLD_PCT == 0.85
    from rlm_local.cli import build_parser

    args = build_parser().parse_args(["run", "--context", "x", "q"])
    assert args.max_iterations == defaults.MAX_ITERATIONS


# ---- backends and environments -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["anthropic", "gemini", "azure_openai", "portkey", "openrouter", "vercel"])
def test_hosted_backends_are_refused_naming_the_local_ones(backend):
    with pytest.raises(Error, match="hosted API.*backend='llamacpp'"):
        RLM(backend=backend, backend_kwargs={"model_name": "x"})


def test_vllm_with_a_base_url_is_a_client_of_that_server():
    with RLM(backend="vllm", backend_kwargs={"model_name": "m", "base_url": "http://127.0.0.1:9/v1"}) as rlm:
        assert isinstance(rlm.engine, OpenAIEngine) and rlm.engine.servers == ["http://127.0.0.1:9/v1"]


def test_persistent_with_a_remote_environment_says_so():
    with pytest.raises(ValueError, match="persistent=True is not supported.*environment='local'"):
        RLM(backend="scripted", backend_kwargs={"replies": []}, environment="modal", persistent=True)


# ---- a reference client as the model ---------------------------------------------------------------------------
def test_a_reference_style_client_is_driven_like_an_engine():
    """What the reference's tests do: a client whose completion(messages) returns the replies."""
    client = Mock()
    client.completion.side_effect = ["```repl\nx = 6 * 7\nprint(x)\n```", "```repl\nFINAL(x)\n```"]
    client.get_last_usage.return_value = ModelUsageSummary(1, 100, 5)
    with RLM(engine=client, backend_kwargs={"model_name": "my-model"}) as rlm:
        result = rlm.completion("some context")
    assert result.response == "42" and result.root_model == "my-model"
    messages = client.completion.call_args[0][0]
    assert messages[0]["role"] == "system" and "42" in messages[-1]["content"]
    assert result.usage_summary.total_input_tokens == 200  # from the client's own usage
    assert isinstance(rlm.engine, ClientEngine)


def test_get_client_is_the_one_hook_engines_are_made_through(monkeypatch):
    import rlm_local.rlm as rlm_module

    made = []

    def fake(backend, kwargs):
        made.append((backend, kwargs))
        return ScriptedEngine(["FINAL(hooked)"], model_name=kwargs["model_name"])

    monkeypatch.setattr(rlm_module, "get_client", fake)
    with RLM(backend="openai", backend_kwargs={"model_name": "t"}) as rlm:
        assert rlm.completion("ctx").response == "hooked"
    assert made == [("openai", {"model_name": "t"})]


# ---- prompts ---------------------------------------------------------------------------------------------------
def test_custom_system_prompt_replaces_ours_and_fills_the_tools_slot():
    def lookup(sku: str) -> str:
        """Look a product up."""
        return sku

    custom = 'You are a careful analyst. Tools:{custom_tools_section}\nAnswer with {{"answer": ...}} and {x}.'
    rlm, engine = make(["FINAL(ok)"], custom_system_prompt=custom, custom_tools={"lookup": lookup})
    rlm.completion(DOC)
    system = system_of(engine)
    assert (
        system.startswith("You are a careful analyst. Tools:\n") and "You are a Recursive Language Model" not in system
    )
    assert "`lookup(...)`: Look a product up." in system and '{"answer": ...}' in system and "{x}" in system


def test_a_custom_prompt_without_the_slot_gets_the_tools_appended_and_literal_braces_survive():
    rlm, engine = make(["FINAL(ok)"], custom_system_prompt="Be brief {not a slot}", custom_tools={"rate": 0.2})
    rlm.completion(DOC)
    assert system_of(engine).startswith("Be brief {not a slot}\n\n") and "`rate`: read-only data" in system_of(engine)


def test_orchestrator_adds_planning_advice_and_user_prologue_follows_the_metadata():
    rlm, engine = make(["FINAL(ok)"], orchestrator=True, user_prologue="Tip: the answer is near the end.")
    rlm.completion(DOC, root_prompt="What?")
    first = engine.requests[0].messages
    assert "orchestrator" in first[0]["content"]
    assert first[1]["content"].endswith("Tip: the answer is near the end.") and "What?" in first[1]["content"]
    plain, engine = make(["FINAL(ok)"])
    plain.completion(DOC)
    assert "orchestrator" not in system_of(engine)


def test_tool_entries_with_descriptions_and_sub_tools_for_child_runs():
    seen = []

    def reply(req: Request) -> str:
        system = req.messages[0]["content"] if is_root(req) else ""
        if "Top-level task" in last_user(req) and "Output of" not in last_user(req):
            seen.append(("child", "`helper" in system, "`price" in system))
            return repl("FINAL(helper(2))")
        if "Output of" in last_user(req):
            return "FINAL(done)"
        seen.append(("root", "`helper" in system, "`price" in system))
        return repl("print(rlm_query('Top-level task for a child', 'child document text'))")

    tools = {"price": {"tool": lambda x: x * 10, "description": "Price in cents."}}
    rlm, engine = make(reply, max_depth=2, custom_tools=tools, custom_sub_tools={"helper": lambda x: x + 1})
    assert rlm.completion(DOC).response == "done"
    assert seen == [("root", False, True), ("child", True, False)]
    assert "`price(...)`: Price in cents." in system_of(engine)


# ---- sampling ----------------------------------------------------------------------------------------------------
def test_sampling_args_reach_root_turns_and_sub_sampling_args_the_sub_calls():
    def reply(req: Request) -> str:
        if not is_root(req):
            return "sub"
        return "FINAL(ok)" if "Output of" in last_user(req) else repl("print(llm_query('hi'))")

    rlm, engine = make(
        reply,
        sampling_args={"temperature": 0.7, "seed": 3, "max_tokens": 300},
        sub_sampling_args={"max_tokens": 40, "stop": ["\n\n"]},
    )
    rlm.completion(DOC)
    root = [r for r in engine.requests if is_root(r)][0].sampling
    sub = [r for r in engine.requests if not is_root(r)][0].sampling
    assert (root.temperature, root.seed, root.max_tokens) == (0.7, 3, 300)
    assert (sub.max_tokens, sub.stop, sub.temperature) == (40, ("\n\n",), 0.0)
    with pytest.raises(Error, match="sampling_args: unknown keys \\['frequency_penalty'\\]"):
        make([], sampling_args={"frequency_penalty": 1})


# ---- callbacks --------------------------------------------------------------------------------------------------
def test_callbacks_fire_at_the_reference_s_moments_with_its_arguments():
    calls = []

    def reply(req: Request) -> str:
        if "child task" in req.messages[1]["content"]:
            return repl("FINAL('child answer')")
        return "FINAL(done)" if "Output of" in last_user(req) else repl("print(rlm_query('child task', 'a b c d'))")

    rlm, _ = make(
        reply,
        max_depth=2,
        on_iteration_start=lambda d, i: calls.append(("it_start", d, i)),
        on_iteration_complete=lambda d, i, s: calls.append(("it_done", d, i, s >= 0)),
        on_subcall_start=lambda d, m, p: calls.append(("sub_start", d, m, p)),
        on_subcall_complete=lambda d, m, s, e: calls.append(("sub_done", d, m, e)),
    )
    assert rlm.completion(DOC).response == "done"
    assert calls == [
        ("it_start", 0, 1),
        ("sub_start", 1, "scripted", "child task"),
        ("sub_done", 1, "scripted", None),
        ("it_done", 0, 1, True),
        ("it_start", 0, 2),
        ("it_done", 0, 2, True),
    ]


def test_a_callback_that_raises_does_not_end_the_run():
    def boom(*args):
        raise RuntimeError("bad callback")

    rlm, _ = make(["FINAL(fine)"], on_iteration_start=boom, on_iteration_complete=boom)
    assert rlm.completion(DOC).response == "fine"


# ---- concurrency of child runs --------------------------------------------------------------------------------
@pytest.mark.parametrize("cap", [1, 3])
def test_max_concurrent_subcalls_caps_child_runs_at_once(cap):
    lock, live, peak = threading.Lock(), [0], [0]

    def track() -> str:  # a tool: runs in this process while a child's cell waits on it
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.3)
        with lock:
            live[0] -= 1
        return "ok"

    def reply(req: Request) -> str:
        if "part" in req.messages[1]["content"]:  # a child's first turn
            return repl("FINAL(track())")
        if "Output of" in last_user(req):
            return "FINAL(done)"
        return repl("print(rlm_query_batched([f'part {i}' for i in range(6)], [f'doc {i} x' for i in range(6)]))")

    rlm, _ = make(reply, max_depth=2, max_concurrent_subcalls=cap, custom_tools={"track": track})
    assert rlm.completion(DOC).response == "done"
    assert peak[0] == cap


# ---- the REPL's reference names ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, expected",
    [
        ('answer["content"] = "forty-two"\nanswer["ready"] = True', "forty-two"),
        ('answer["content"] = 42\nanswer["ready"] = True', "42"),  # str() of the content
        ('answer["content"] = [1, 2]\nanswer["ready"] = True\nraise ValueError("after")', "[1, 2]"),
        ('answer = {"content": "rebound", "ready": True}', "rebound"),
        ('answer["ready"] = True', ""),
    ],
)
def test_the_answer_dict_is_predefined_and_ends_the_run_when_ready(code, expected):
    rlm, _ = make([repl(code), "FINAL(not this)"])
    result = rlm.completion(DOC)
    assert result.response == expected and result.iterations == 1


def test_an_answer_dict_not_ready_goes_on():
    rlm, _ = make([repl('answer["content"] = "draft"\nprint(answer)'), "FINAL(later)"])
    assert rlm.completion(DOC).response == "later"


def test_llm_query_model_argument_is_refused_and_rlm_query_model_is_not_a_context():
    def reply(req: Request) -> str:
        if not is_root(req):
            return "sub answer"
        if "Output of" in last_user(req):
            return "FINAL(seen)"
        return repl(
            "try:\n    llm_query('x', model='gpt-5')\nexcept ValueError as e:\n    print('refused:', e)\n"
            "print(rlm_query('sum it', 'gpt-4'))\nprint(rlm_query('ask the sub model', 'scripted'))"
        )

    rlm, engine = make(reply)
    result = rlm.completion(DOC)
    out = [e for e in result.trajectory if e["event"] == "cell"][0]["stdout"]
    assert "refused: llm_query(model=...) is not available here" in out
    assert "'gpt-4' looks like a model name" in out and "sub answer" in out
    assert not any("gpt-4" in m["content"] for r in engine.requests if not is_root(r) for m in r.messages)


# ---- the logger, the result, the usage ------------------------------------------------------------------------
def test_rlm_logger_in_memory_by_default_and_one_trajectory_per_completion():
    logger = RLMLogger()
    rlm, _ = make([repl("x = 1"), repl("FINAL(x)"), repl("FINAL('again')")], logger=logger)
    first = rlm.completion(DOC)
    assert logger.log_file_path is None and first.metadata["run_metadata"]["max_iterations"] == 30
    assert [len(i["code_blocks"]) for i in first.metadata["iterations"]] == [1, 1]
    assert first.metadata["iterations"][-1]["final_answer"] == "1"
    second = rlm.completion(DOC + "another document")
    assert len(second.metadata["iterations"]) == 1 and logger.iteration_count == 1
    assert make(["FINAL(x)"])[0].completion(DOC).metadata is None  # no logger, no metadata


def test_result_types_have_the_reference_s_fields_and_round_trip():
    summary = UsageSummary(model_usage_summaries={"m": ModelUsageSummary(2, 10, 5)})
    assert (summary.total_input_tokens, summary.total_output_tokens, summary.total_cost) == (10, 5, None)
    priced = UsageSummary.from_dict({"model_usage_summaries": {"m": {"total_calls": 1, "total_input_tokens": 1,
                                     "total_output_tokens": 1, "total_cost": 0.5}}})  # fmt: skip
    assert priced.total_cost == 0.5 and priced.to_dict()["total_cost"] == 0.5
    rlm, _ = make(["FINAL(ok)"])
    result = rlm.completion("the prompt text")
    assert result.prompt == "the prompt text" and result.error is None and result.metadata is None
    again = RLMChatCompletion.from_dict(result.to_dict())
    assert again.response == "ok" and again.usage_summary == result.usage_summary and again.root_model == "scripted"


# ---- limits ------------------------------------------------------------------------------------------------------
def test_max_errors_raises_the_reference_s_exception_with_the_last_error():
    rlm, _ = make(lambda req: "FINAL(best)" if "STOP" in last_user(req) else repl("1/0"), max_errors=2)
    with pytest.raises(ErrorThresholdExceededError) as caught:
        rlm.completion(DOC)
    err = caught.value
    assert err.threshold == 2 and err.error_count == 2 and "ZeroDivisionError" in err.last_error
    assert err.partial_answer == "best" and err.result.stopped_reason == "max_errors"


def test_ctrl_c_is_a_cancellation_error():
    import os
    import signal

    def reply(req: Request) -> str:
        # Ctrl-C arrives while the caller waits on the model: a real SIGINT, which (unlike
        # _thread.interrupt_main) also wakes a main thread blocked in a wait, so a slow box cannot let the
        # run finish first
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(2.0)
        return "FINAL(too late)"

    # Python's own Ctrl-C behaviour (KeyboardInterrupt), as in a user's process: libraries that earlier tests
    # loaded into this process (vLLM, Ray, uvicorn) may have installed SIGINT handlers of their own
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with RLM(backend="scripted", engine=ScriptedEngine(reply)) as rlm:
            with pytest.raises(CancellationError, match="cancelled"):
                rlm.completion(DOC)
        with RLM(backend="scripted", engine=ScriptedEngine(reply), raise_on_limit=False) as rlm:
            with pytest.raises(KeyboardInterrupt):
                rlm.completion(DOC + " again")
    finally:
        signal.signal(signal.SIGINT, previous)
