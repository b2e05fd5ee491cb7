"""Steering a small instruction model (issue 11): each behaviour driven by the scripted engine through the
real loop, sandbox and scheduler, plus the pure text rules (runaway cut, prose answers) on their own."""

from __future__ import annotations

import time

import pytest
from scripting import is_root, last_user, repl

from rlm_local import RLM
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.loop import run as run_module
from rlm_local.loop.final import plain_answer
from rlm_local.loop.steering import alike, cut_runaway

DOC = "\n".join(f"line {i}: nothing to see" for i in range(200)) + "\nThe vault code is 9157.\n"


def make(replies, **kwargs) -> tuple[RLM, ScriptedEngine]:
    engine = ScriptedEngine(replies)
    return RLM(backend="scripted", engine=engine, **kwargs), engine


def root_requests(engine: ScriptedEngine) -> list:
    return [r for r in engine.requests if is_root(r)]


# ---- a. shadowing a REPL name -------------------------------------------------------------------------------
def test_assigning_context_is_told_to_the_model():
    fake = "context = 'type: str, ' + 'total length: 6,000 characters'\nprint('vault' in context)"
    rlm, engine = make([repl(fake), repl("print('vault' in context)"), "FINAL(9157)"])
    assert rlm.completion(DOC, "What is the vault code?").response == "9157"
    seen = last_user(engine.requests[1])
    assert "`context` is a reserved REPL name: your cell assigned a str of 41 characters to it" in seen
    assert f"holds the real document (a str of {len(DOC):,} characters)" in seen
    assert "False" in seen  # what the cell did with its own string
    assert "True" in last_user(engine.requests[2]) and "reserved" not in last_user(engine.requests[2])
    system = engine.requests[0].messages[0]["content"]
    assert "never assign to `context`" in system


# ---- b. repeated replies --------------------------------------------------------------------------------------
def test_repeated_replies_get_escalating_nudges():
    same = repl("print(context[:30])")
    near = repl("print(context[:30])", prose="Let me look again.")  # near-identical, same output
    rlm, engine = make([same, same, near, same, "FINAL(9157)"])
    assert rlm.completion(DOC, "q").response == "9157"
    seen = [last_user(r) for r in root_requests(engine)[1:]]
    assert "same as your previous turn" not in seen[0]
    assert "same as your previous turn" in seen[1]  # (or of the two before it)
    assert "Try a different approach" in seen[2] and "3 times in a row" in seen[2]
    assert "give your best answer now" in seen[3] and "FINAL(answer)" in seen[3]


def test_alternating_repeats_are_caught():
    """Measured on Qwen2.5-Coder-1.5B: a cell, then the same prose, then the same cell... four times over."""
    cell, prose = repl("print(context[:20])"), "The code is not mentioned in the given context."
    rlm, engine = make([cell, prose, cell, prose, cell, "FINAL(9157)"])
    rlm.completion(DOC, "q")
    seen = [last_user(r) for r in root_requests(engine)[1:]]
    assert not any("previous turn" in s or "in a row" in s for s in seen[:2])
    assert "same as your previous turn" in seen[2]
    assert "Try a different approach" in seen[3] and "give your best answer now" in seen[4]


def test_same_reply_with_new_output_is_not_a_repeat():
    step = repl("i += 1\nprint(context.splitlines()[i])")
    rlm, engine = make([repl("i = 0"), step, step, step, "FINAL(done)"])
    rlm.completion(DOC, "q")
    assert not any("previous turn" in last_user(r) or "in a row" in last_user(r) for r in root_requests(engine))


def test_alike():
    assert alike("a  b\nc", "a b c") and alike("x" * 100 + "1", "x" * 100 + "2")
    assert not alike("print(context[:100])", "print(len(context))")


# ---- c. prose answers -------------------------------------------------------------------------------------------
def test_prose_answer_after_looking_is_taken():
    rlm, _ = make([repl("print(context[-30:])"), "The answer is 9157."])
    result = rlm.completion(DOC, "What is the vault code?")
    assert (result.response, result.stopped_reason, result.iterations) == ("9157", "final", 2)


def test_prose_before_looking_is_asked_for_final_then_taken_when_insisted():
    rlm, engine = make(["The vault code is 9157.", "The vault code is 9157."])
    result = rlm.completion(DOC, "What is the vault code?")
    assert result.response == "The vault code is 9157." and result.stopped_reason == "final"
    assert "reply with only FINAL(your answer)" in last_user(engine.requests[1])


def test_prose_that_is_not_an_answer_is_never_taken():
    plan = "Let me search the context for the vault code."
    rlm, engine = make([plan, plan, "The answer is in the context.", "Answer: 9157"])
    result = rlm.completion(DOC, "q")
    assert result.response == "9157" and result.iterations == 4


@pytest.mark.parametrize(
    "reply, previous, expected",
    [
        ("Answer: 4471", None, "4471"),
        ("**Final answer:** Lisbon.", None, "Lisbon"),
        ("The answer is 9157.", None, "9157"),
        ("Final answer:\n**Lisbon**", None, "Lisbon"),
        ("The access code is 4471.", None, None),  # no marker, said once
        ("The access code is 4471.", "The access code is  4471.", "The access code is 4471."),
        ("The answer is in the context.", None, None),
        ("Let me search. Answer: 3", None, None),
        ("What is the code?", "What is the code?", None),
        ("The answer is not mentioned.", None, None),
        ("Answer:", "Answer:", None),
        ("Answer: " + "x" * 500, None, None),
        ("```python\nprint(1)\n```\nAnswer: 3", None, None),
        # pointers and hedges are not answers; nor is an acknowledgement said twice
        ("The answer is printed above.", None, None),
        ("The answer is probably hidden deeper in the log.", None, None),
        ("Answer: see the output of the last cell", None, None),
        ("Sure, I can help with that.", "Sure, I can help with that.", None),
        ("Okay.", "Okay.", None),
        ("Answer: " + "word " * 60, None, None),
    ],
)
def test_plain_answer(reply, previous, expected):
    assert plain_answer(reply, previous) == expected


# ---- d. root replies: the card's cap, runaway repetition ----------------------------------------------------------
def test_runaway_reply_is_cut_and_told():
    runaway = repl("print(len(context))") + "I will now wait for the output.\n" * 60
    rlm, engine = make([runaway, "FINAL(done)"])
    assert rlm.completion(DOC, "q").response == "done"
    kept = engine.requests[1].messages[-2]["content"]  # the assistant turn as the loop kept it
    assert kept.count("I will now wait") == 1 and len(kept) < 200
    seen = last_user(engine.requests[1])
    assert "repeated the same text 60 times in a row" in seen and "it was cut" in seen
    assert "Output of your code" in seen  # the code before the loop still ran


@pytest.mark.parametrize(
    "text",
    [
        "print('=' * 80)\n" + "=" * 400,  # a ruler
        "\n".join(f"print(context[{i * 1000}:{i * 1000 + 1000}])" for i in range(30)),  # similar, not equal
        "x = 1\n" * 5,  # too few
        "ab" * 400,  # unit under 4 characters... repeated as "abab" units: but only 2 distinct characters
    ],
)
def test_ordinary_text_is_not_cut(text):
    assert cut_runaway(text) == (text, None)


def test_runaway_check_is_fast_on_long_text():
    import random

    rng = random.Random(0)
    text = "".join(rng.choice("abcdefghij \n") for _ in range(12_000))
    started = time.perf_counter()
    assert cut_runaway(text)[1] is None
    assert time.perf_counter() - started < 2.0


def test_quality_card_caps_root_replies():
    engine = ScriptedEngine(["FINAL(x)"], model_name="qwen2.5-coder-1.5b")
    RLM(backend="scripted", engine=engine).completion(DOC, "q")
    assert engine.requests[0].sampling.max_tokens == 512


# ---- e. a slow failure of a greedy root request is not sent again -----------------------------------------------
def test_slow_greedy_failure_is_not_retried(monkeypatch):
    monkeypatch.setattr(run_module, "NO_RETRY_AFTER_SECONDS", 0.2)
    calls: list[str] = []

    def reply(request):
        calls.append(last_user(request))
        if len(calls) == 1:
            time.sleep(0.3)
            raise TimeoutError("the server timed out")
        return "FINAL(best)"

    rlm, _ = make(reply)
    result = rlm.completion(DOC, "q")
    assert len(calls) == 2 and "STOP" in calls[1]  # no retry: the second request is the closing one
    assert result.stopped_reason == "engine_error"


def test_fast_failure_is_still_retried():
    calls: list[int] = []

    def reply(request):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("refused")
        return "FINAL(ok)"

    rlm, _ = make(reply)
    assert rlm.completion(DOC, "q").response == "ok" and len(calls) == 2


def test_reply_cut_at_the_length_limit_is_told():
    class LengthLimited(ScriptedEngine):
        """Reports finish_reason 'length' for replies that end in '...' (as a server does at max_tokens)."""

        def generate(self, requests, deadline=None):
            results = super().generate(requests, deadline)
            for result in results:
                if result.text.endswith("..."):
                    result.finish_reason = "length"
            return results

    engine = LengthLimited(
        [repl("print(1)") + "Now I will explain at length...", "FINAL(done)"], model_name="qwen2.5-coder-1.5b"
    )
    RLM(backend="scripted", engine=engine).completion(DOC, "q")
    assert "cut at the length limit (512 tokens)" in last_user(engine.requests[1])


def test_literal_assignment_to_context_is_skipped_and_the_cell_searches_the_real_document():
    """Measured on Qwen2.5-Coder-1.5B: `context = \"\"\"<the preview>\"\"\"` then a search, re-sent after the
    restore note; the literal line is skipped so its search runs on the real document."""
    cell = 'import re\ncontext = """The vault is\nsomewhere."""\nprint(re.findall(r"vault code is (\\d+)", context))'
    rlm, engine = make([repl(cell), "FINAL(9157)"])
    rlm.completion(DOC, "q")
    seen = last_user(engine.requests[1])
    assert "line 2 of your cell (`context = ...`) was skipped" in seen
    assert f"already holds the real document (a str of {len(DOC):,} characters)" in seen
    assert "['9157']" in seen and "restored" not in seen
