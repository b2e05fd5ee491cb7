"""The reference library's README examples and documented API calls, run against rlm-local.

Written from the reference's documentation (alexzhang13/rlm, PyPI ``rlms``), not copied: each test is a
call a user of the reference would write, with ``from rlm import RLM`` replaced by ``from rlm_local import
RLM``. ``backend="openai"`` runs for real over HTTP against our own OpenAI-compatible server, whose model
is the scripted engine (a deterministic stand-in for gpt-5-nano). Known gaps are asserted as clear errors."""

from __future__ import annotations

import json
import logging

import pytest

pytest.importorskip("fastapi", reason="the local OpenAI-compatible server needs the [server] extra")

from scripting import repl  # noqa: E402

from rlm_local import RLM, Error, RLMLogger  # noqa: E402
from rlm_local.engines import Request  # noqa: E402
from rlm_local.engines.scripted import ScriptedEngine  # noqa: E402
from rlm_local.service.bare import create_app
from rlm_local.testing import BackgroundServer  # noqa: E402


def model(req: Request) -> str:
    """The served root model: a few tasks it knows how to do the reference's way, and plain sub-calls."""
    if req.messages[0]["role"] != "system":
        return "sub-answer: " + req.messages[-1]["content"][:20]
    first, last = req.messages[1]["content"], req.messages[-1]["content"]
    seen = "Output of your code" in last
    if "powers of two" in first:
        return (
            "FINAL_VAR(powers)"
            if seen
            else repl("powers = '\\n'.join(str(2 ** i) for i in range(100))\nprint(powers[:20])")
        )
    if "answer dict" in first:
        return repl("answer = {'content': 'done the new way', 'ready': True}")
    if "messages" in first:
        return repl("print(context_1)") if not seen else f"FINAL({last.split('assistant: ')[1].split(chr(10))[0]})"
    if "sub-call" in first:
        return repl("print(llm_query('What is 2+2?'))") if not seen else "FINAL(asked)"
    return "FINAL(ok)"


@pytest.fixture(scope="module")
def server():
    engine = ScriptedEngine(model, model_name="gpt-5-nano")
    with BackgroundServer(create_app(engine)) as url:
        yield url + "/v1"


def openai_kwargs(url: str) -> dict:
    return {"model_name": "gpt-5-nano", "base_url": url, "api_key": "sk-not-used"}


def test_readme_quickstart(server, capsys):
    # The reference README's first example: an openai backend, verbose printing, .response.
    rlm = RLM(backend="openai", backend_kwargs=openai_kwargs(server), verbose=True)
    result = rlm.completion("Print me the first 100 powers of two, each on a newline.")
    lines = result.response.splitlines()
    assert len(lines) == 100 and lines[0] == "1" and lines[-1] == str(2**99)
    assert "done" in capsys.readouterr().err  # verbose printed the run


def test_readme_example_with_logger_environment_and_depth(server, tmp_path):
    # The reference's quickstart with its RLMLogger(log_dir=...), environment="local", environment_kwargs={},
    # max_depth=1; print(result) shows the answer; the trajectory is in result.metadata and in log_dir.
    rlm = RLM(
        backend="openai",
        backend_kwargs=openai_kwargs(server),
        environment="local",
        environment_kwargs={},
        max_depth=1,
        max_iterations=30,
        logger=RLMLogger(log_dir=str(tmp_path / "logs")),
        verbose=False,
    )
    result = rlm.completion("Print me the first 100 powers of two, each on a newline.")
    assert str(result) == result.response and result.response.startswith("1\n2\n4\n8")
    meta = result.metadata
    assert (
        meta["run_metadata"]["root_model"] == "gpt-5-nano"
        and meta["run_metadata"]["backend_kwargs"]["api_key"] == "***"
    )
    assert [it["iteration"] for it in meta["iterations"]] == [1, 2]
    first = meta["iterations"][0]
    assert first["code_blocks"][0]["code"].startswith("powers = ") and first["final_answer"] is None
    assert meta["iterations"][1]["final_answer"] == result.response
    (log,) = (tmp_path / "logs").glob("*.jsonl")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["metadata", "iteration", "iteration"]


def test_result_fields_usage_summary_and_to_dict(server):
    rlm = RLM(backend="openai", backend_kwargs=openai_kwargs(server))
    result = rlm.completion("Context for a sub-call test.", root_prompt="Make a sub-call, then answer.")
    assert result.response == "asked" and result.execution_time > 0
    usage = result.usage_summary
    summary = usage.model_usage_summaries["gpt-5-nano"]
    assert summary.total_calls == 3  # two root turns and one llm_query
    assert summary.total_input_tokens > 0 and summary.total_output_tokens > 0
    as_dict = usage.to_dict()["model_usage_summaries"]["gpt-5-nano"]
    assert as_dict == {
        "total_calls": 3,
        "total_input_tokens": summary.total_input_tokens,
        "total_output_tokens": summary.total_output_tokens,
    }
    full = json.loads(json.dumps(result.to_dict()))
    assert full["response"] == "asked" and full["root_model"] == "gpt-5-nano"
    assert full["usage_summary"]["model_usage_summaries"]["gpt-5-nano"]["total_calls"] == 3


def test_other_backends_for_sub_calls(server):
    sub = {"replies": ["from the other backend"], "model_name": "sub-model"}
    rlm = RLM(
        backend="openai", backend_kwargs=openai_kwargs(server), other_backends=["scripted"], other_backend_kwargs=[sub]
    )
    result = rlm.completion("Context for a sub-call test.", root_prompt="Make a sub-call, then answer.")
    assert set(result.usage_summary.model_usage_summaries) == {"gpt-5-nano", "sub-model"}


def test_answer_dict_protocol(server):
    # The reference's current way to finish: answer = {"content": ..., "ready": True} in the REPL.
    result = RLM(backend="openai", backend_kwargs=openai_kwargs(server)).completion(
        "x", root_prompt="Use the answer dict."
    )
    assert result.response == "done the new way" and result.stopped_reason == "final"
    cells = [e["code"] for e in result.trajectory if e["event"] == "cell"]
    assert cells == ["answer = {'content': 'done the new way', 'ready': True}"]  # no generated cells


def test_chat_messages_as_context(server):
    messages = [
        {"role": "user", "content": "Hi, my name is Ada."},
        {"role": "assistant", "content": "Hello Ada"},
        {"role": "user", "content": "What did you say?"},
    ]
    result = RLM(backend="openai", backend_kwargs=openai_kwargs(server)).completion(
        messages, root_prompt="Read the messages."
    )
    assert result.response == "Hello Ada"


def test_logging_logger_gets_every_event(server, caplog):
    log = logging.getLogger("my_app.rlm")
    with caplog.at_level(logging.INFO, logger="my_app.rlm"):
        RLM(backend="openai", backend_kwargs=openai_kwargs(server), logger=log).completion("x")
    kinds = [json.loads(r.getMessage())["event"] for r in caplog.records if r.name == "my_app.rlm"]
    assert kinds[0] == "run_start" and kinds[-1] == "final"


def test_depth_at_max_depth_is_a_plain_model_call(server):
    # The reference: an RLM created at depth >= max_depth answers as a plain LM.
    result = RLM(backend="openai", backend_kwargs=openai_kwargs(server), depth=1, max_depth=1).completion("hello there")
    assert result.response.startswith("sub-answer: hello there")
    assert not [e for e in result.trajectory if e["event"] == "cell"]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"environment": "docker"}, "use environment='local'"),
        ({"environment": "modal"}, "use environment='local'"),
        ({"environment": "nowhere"}, "unknown environment"),
        ({"custom_tools": {"llm_query": len}}, "custom_tools"),
        ({"custom_tools": {"_secret": len}}, "custom_tools"),
        ({"custom_tools": {"blob": object()}}, "custom_tools"),
        ({"max_budget": 1.0}, "max_tokens"),
    ],
)
def test_options_we_do_not_run_are_refused_clearly(kwargs, fragment):
    with pytest.raises(Error, match=fragment.replace("(", r"\(")):
        RLM(backend="scripted", backend_kwargs={"replies": []}, **kwargs)


def test_every_api_failure_is_an_rlm_local_error():
    with pytest.raises(Error):
        RLM(backend="not-a-backend")
    with pytest.raises(Error):
        RLM(backend="scripted", backend_kwargs={"replies": ["FINAL(x)"]}).completion("")
    with pytest.raises(Error):
        RLM(backend="openai", backend_kwargs={"model_name": "m", "base_url": "not a url"})


def test_custom_tools_are_repl_functions_run_by_the_caller_and_read_only_data():
    """The reference's custom_tools: a function runs in the caller's process with JSON arguments; data is
    read-only; the root model is told about both."""
    calls = []

    def lookup_price(sku: str) -> float:
        """Price of a product by its SKU."""
        calls.append(sku)
        return {"A1": 9.5}.get(sku, 0.0)

    code = "```repl\nprint(lookup_price('A1'), currency['code'])\nFINAL(lookup_price('A1') * 2)\n```"
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"replies": [code]},
        custom_tools={"lookup_price": lookup_price, "currency": {"code": "EUR"}},
    )
    try:
        result = rlm.completion("a catalogue", root_prompt="What do two A1 cost?")
    finally:
        rlm.close()
    assert result.response == "19.0" and calls == ["A1", "A1"]
    cells = [e for e in result.trajectory if e["event"] == "cell"]
    assert cells[0]["stdout"] == "9.5 EUR\n"
    prompt = rlm.engine.requests[0].messages[0]["content"]  # the root's system prompt lists the tools
    assert "lookup_price(...)`: Price of a product by its SKU." in prompt and "`currency`: read-only data" in prompt


def test_persistent_keeps_one_repl_across_completions():
    """The reference's persistent=True: variables survive; context_0, context_1.. are the documents and
    `context` the first; history_0.. the conversations and `history` the first; the root is told."""
    replies = [
        "```repl\nfirst_len = len(context)\nFINAL(first_len)\n```",
        "```repl\nprint(first_len, len(context_1), context_0[:5], history[0]['role'])\n"
        "FINAL(f'{first_len}+{len(context_1)}')\n```",
        "```repl\nFINAL(context_1 + '|' + context_2 + '|' + context + '|' + str(len(history_1) > 0))\n```",
    ]
    rlm = RLM(backend="scripted", backend_kwargs={"replies": replies}, persistent=True)
    try:
        a = rlm.completion("alpha document", root_prompt="How long?")
        b = rlm.completion("beta", root_prompt="And now?")
        c = rlm.completion("gamma", root_prompt="Last?")
        session = rlm.session
        assert rlm.persistent is True and rlm._persistent_env is session
        assert session.get_context_count() == 3 and session.get_history_count() == 3
        assert session.locals["history"] == session.locals["history_0"]
        assert session.locals.get("first_len") == 14 and "nothing_like_this" not in session.locals
    finally:
        rlm.close()
    assert a.response == "14" and b.response == "14+4" and c.response == "beta|gamma|alpha document|True"
    cells = [e for e in b.trajectory if e["event"] == "cell"]
    assert cells[0]["stdout"] == "14 4 alpha system\n"
    turns = [e for e in c.trajectory if e["event"] == "run_start"]
    assert "3 contexts: this question's document is `context_2`" in turns[0]["question"]
    assert rlm._persistent_env is None  # closed with the RLM
