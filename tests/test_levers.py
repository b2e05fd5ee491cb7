"""The loop's levers (issue 15, rlm_local/loop/levers.py), each driven by the scripted engine through the real
loop, sandbox and scheduler: resampling a repeated cell, questioning an ungrounded answer, recovering a
candidate at a budget stop, the REPL toolkit, constrained replies; and how levers are chosen."""

from __future__ import annotations

import logging

import pytest
from scripting import is_root, last_user, repl

from rlm_local import RLM
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.errors import InputError
from rlm_local.loop.levers import Levers, parse_lever_flags
from rlm_local.loop.toolkit import NAMES

DOC = "\n".join(f"line {i}: nothing to see" for i in range(300)) + "\nThe Vault Code is 9157.\n"
ALL_ON = {"toolkit": True, "resample": True, "recover": True, "ground": True}


def make(replies, levers=None, **kwargs) -> tuple[RLM, ScriptedEngine]:
    engine = ScriptedEngine(replies)
    return RLM(backend="scripted", engine=engine, levers=levers, **kwargs), engine


def roots(engine: ScriptedEngine) -> list:
    return [r for r in engine.requests if is_root(r)]


def cells(result) -> list[str]:
    return [e["code"] for e in result.trajectory if e["event"] == "cell"]


# ---- resample: never the same cell twice in a row ------------------------------------------------------------
def test_a_repeated_cell_is_resampled_warmer_and_the_new_code_runs():
    stuck = repl("print(context.count('vault code'))")  # case-sensitive: 0, every time

    def script(req):
        if not is_root(req):
            return "sub"
        if req.sampling.temperature > 0:  # a resample: the model tries something else
            return repl("hits = search('vault code')")
        return stuck if len(roots_seen) < 3 else "FINAL(9157)"

    roots_seen: list = []

    def counting(req):
        if is_root(req) and req.sampling.temperature == 0:
            roots_seen.append(req)
        return script(req)

    rlm, engine = make(counting, levers=ALL_ON)
    result = rlm.completion(DOC, "What is the vault code?")
    assert result.response == "9157"
    ran = cells(result)
    assert ran == ["print(context.count('vault code'))", "hits = search('vault code')"]
    resampled = [r for r in roots(engine) if r.sampling.temperature > 0]
    assert resampled and resampled[0].sampling.temperature == 0.7 and resampled[0].sampling.seed is not None
    turns = [e for e in result.trajectory if e["event"] == "root_turn" and e.get("resample")]
    assert turns and turns[0]["resample"] == 1


def test_a_cell_repeated_through_every_resample_is_not_run_and_its_output_is_quoted_back():
    stuck = repl("print('hits:', context.count('vault code'))")
    replies = [stuck] * 4 + ["FINAL(none found)", "FINAL(none found)"]
    rlm, engine = make(replies, levers=ALL_ON, max_iterations=4)
    result = rlm.completion(DOC, "What is the vault code?")
    assert cells(result) == ["print('hits:', context.count('vault code'))"]  # ran once, never again
    told = last_user(roots(engine)[4])
    assert "same code as in your previous turn" in told and "hits: 0" in told


def test_without_the_lever_the_same_cell_runs_again():
    stuck = repl("print(context.count('vault code'))")
    rlm, _ = make([stuck, stuck, "FINAL(0)"], levers={"resample": False})
    assert len(cells(rlm.completion(DOC, "q"))) == 2


# ---- ground: an answer the run never observed is questioned once --------------------------------------------
def test_an_invented_answer_is_questioned_once_then_taken_and_flagged():
    rlm, engine = make([repl("print(len(context))"), "FINAL(12345)", "FINAL(12345)"], levers=ALL_ON)
    result = rlm.completion(DOC, "What is the vault code?")
    assert result.response == "12345" and result.answer_grounded is False
    assert "'12345' appears in no output you have seen" in last_user(roots(engine)[2])
    assert result.trajectory[-1]["answer_grounded"] is False


def test_an_observed_or_computed_answer_is_taken_at_once():
    rlm, _ = make([repl("hits = search('vault code')"), "FINAL(9157)"], levers=ALL_ON)
    result = rlm.completion(DOC, "What is the vault code?")
    assert result.response == "9157" and result.answer_grounded is True and result.iterations == 2
    computed = repl("n = len([l for l in context.split(chr(10)) if 'nothing' in l])\nFINAL(str(n))")
    rlm, _ = make([repl("print(context[:40])"), computed], levers=ALL_ON)
    result = rlm.completion(DOC, "How many lines say nothing?")
    assert result.response == "300" and result.answer_grounded is True and result.iterations == 2


def test_an_answer_given_before_any_output_was_read_is_sent_back_once():
    premature = repl("FINAL('vault code')")  # a first cell that answers without looking
    rlm, engine = make([premature, repl("hits = search('vault code')"), "FINAL(9157)"], levers=ALL_ON)
    result = rlm.completion(DOC, "What is the vault code?")
    assert result.response == "9157" and result.iterations == 3
    assert "before seeing any output of your code" in last_user(roots(engine)[1])


# ---- recover: a budget stop returns the best candidate, never empty when one exists -------------------------
def test_a_budget_stop_recovers_the_printed_candidate():
    first = repl("for h in search('vault code'):\n    print('Answer:', h['text'].split()[-1].rstrip('.'))")
    rlm, _ = make(
        [first] + [repl(f"print({i})") for i in range(5)] + ["I could not finish."], levers=ALL_ON, max_iterations=4
    )
    result = rlm.completion(DOC, "What is the vault code?")
    assert result.stopped_reason == "max_iterations"
    assert result.response == "9157" and result.answer_source == "recovered" and result.answer_grounded is True


def test_without_recover_the_budget_stop_keeps_the_closing_prose():
    first = repl("print('Answer: 9157')")
    rlm, _ = make([first, repl("print(1)"), ""], levers={"recover": False}, max_iterations=2)
    result = rlm.completion(DOC, "q")
    assert result.response == "" and result.answer_source == "none"


def test_an_ungrounded_closing_answer_gives_way_to_a_grounded_candidate():
    first = repl("print('Answer: 9157')")
    rlm, _ = make([first, repl("print(2)"), "FINAL(4242)"], levers=ALL_ON, max_iterations=2)
    result = rlm.completion(DOC, "q")
    assert result.response == "9157" and result.answer_source == "recovered"


# ---- toolkit ------------------------------------------------------------------------------------------------
def test_the_toolkit_is_in_the_repl_and_the_prompt_and_checks_its_arguments():
    code = (
        "print(len(chunks(size=1000)), count(['a', 'b', 'a']), vote(['x', 'y', 'y']), section_of(301, '^line 29'))\n"
        "hits = search('VAULT CODE', window=0)\n"
        "print(ask_each('Is this about a vault?', ['a vault', 'a cat', 'a vault'], choices=['yes', 'no']))\n"
        "search(42)"
    )
    subs: list[str] = []

    def script(req):
        if not is_root(req):
            subs.append(req.messages[-1]["content"])
            return "Yes." if req.messages[-1]["content"].endswith("a vault") else "No, it is not."
        return repl(code) if len(subs) == 0 and "Output" not in last_user(req) else "FINAL(done)"

    rlm, engine = make(script, levers={"toolkit": True})
    result = rlm.completion(DOC, "q")
    out = next(e for e in result.trajectory if e["event"] == "cell")
    pieces = -(-len(DOC) // 1000)  # at most: pieces end early at line breaks
    head = out["stdout"].split("\n")[0].split(" ", 1)
    assert pieces <= int(head[0]) <= pieces + 1 and head[1] == "{'a': 2, 'b': 1} y (300, 'line 299: nothing to see')"
    assert "L301> The Vault Code is 9157." in out["stdout"]
    assert "['yes', 'no', 'yes']" in out["stdout"] and len(subs) == 2  # identical items asked once
    assert "TypeError: search(phrase" in out["error"]
    system = roots(engine)[0].messages[0]["content"]
    assert all(f"`{name}(" in system for name in NAMES) and "Worked examples" in system
    rlm, engine = make(["FINAL(x)"], levers={"toolkit": False})
    rlm.completion(DOC, "q")
    assert "search(" not in roots(engine)[0].messages[0]["content"]


def test_a_search_that_matches_nothing_names_the_most_specific_part_of_the_phrase_that_does():
    code = "search('the secret vault code')\nsearch('zebra quartz')"
    rlm, _ = make([repl(code), "FINAL(done)"], levers={"toolkit": True})
    out = next(e for e in rlm.completion(DOC, "q").trajectory if e["event"] == "cell")["stdout"]
    # 'vault code' once, where 'the' and 'code' alone occur more often: the rarest run of words is named
    assert (
        "no line contains 'the secret vault code' (case-insensitive); 'vault code' occurs 1 time: search('vault code')"
        in out
    )
    assert "no line contains 'zebra quartz' (case-insensitive)\n" in out  # no part of it occurs: no hint


ASKED = ("Who was the first person to walk on the moon?", "Where do penguins spend the winter?")
LOG = "\n".join(f"2023-01-{i % 28 + 1:02d} || user {i} || {ASKED[i % 2]}" for i in range(600))


@pytest.mark.parametrize(
    "call, says",
    [
        # every record is different only in its date and user: the model is told what repeats
        ("ask_each('Which kind of answer does this ask for?', lines)", "leaves 2 different items"),
        # one record's own text passed as the question
        ("ask_each('Where do penguins spend the winter?', lines[:4])", "the question looks copied from item 2"),
        # ... or reworded a little (a small model's way), with the choices: told what to ask instead
        (
            "ask_each('Who was the first person walking on the moon?', lines[:4], choices=['human', 'location'])",
            "e.g. 'Which of the choices fits this item?'",
        ),
        ("ask_each('q?', lines, max_items=0)", "max_items must be an int >= 1"),
    ],
)
def test_ask_each_refuses_costly_mistakes_before_any_sub_call_and_says_what_to_do(call, says):
    subs: list[str] = []

    def script(req):
        if not is_root(req):
            subs.append(req.messages[-1]["content"])
            return "human"
        return repl("lines = context.split('\\n')\n" + call) if "Output" not in last_user(req) else "FINAL(done)"

    rlm, _ = make(script, levers={"toolkit": True})
    result = rlm.completion(LOG, "q")
    cell = next(e for e in result.trajectory if e["event"] == "cell")
    assert "ValueError: ask_each" in cell["error"] and says in cell["error"] and subs == []


def test_ask_each_asks_the_part_that_varies_once_and_max_items_can_be_raised():
    subs: list[str] = []
    code = (
        "texts = [line.split(' || ')[-1] for line in context.split('\\n')]\n"
        "labels = ask_each('Which kind of answer does this ask for?', texts, choices=['human', 'location'])\n"
        "print(count(labels), labels[:2], len(ask_each('Is this a log line?', context.split('\\n')[:20], max_items=20)))\n"
        "labels"
    )

    def script(req):
        if not is_root(req):
            subs.append(req.messages[-1]["content"])
            return "location" if "Where" in req.messages[-1]["content"] else "human"
        return repl(code) if "Output" not in last_user(req) else "FINAL(done)"

    rlm, _ = make(script, levers={"toolkit": True})
    cell = next(e for e in rlm.completion(LOG, "q").trajectory if e["event"] == "cell")
    assert cell["error"] in (None, "") and cell["stdout"] == (
        "{'human': 300, 'location': 300} ['human', 'location'] 20\n"
        "<600 answers, how often each: {'human': 300, 'location': 300}>\n"  # a long list echoes as its counts
    )
    assert len(subs) == 2 + 20


# ---- constrain ----------------------------------------------------------------------------------------------
class GrammarEngine(ScriptedEngine):
    supports_grammar = True  # a test double that records the grammar it is given


def test_constrained_root_replies_carry_the_grammar_and_sub_calls_do_not():
    engine = GrammarEngine([repl("print(llm_query('x'))"), "sub answer", "FINAL(ok)"])
    RLM(backend="scripted", engine=engine, levers={"constrain": True}).completion(DOC, "q")
    root = [r for r in engine.requests if is_root(r)]
    assert all(r.sampling.grammar and "FINAL(" in r.sampling.grammar for r in root)
    assert all(r.sampling.grammar is None for r in engine.requests if not is_root(r))
    assert "exactly one ```repl block" in root[0].messages[0]["content"]


def test_constrain_on_an_engine_without_grammars_is_one_warning_and_off(caplog):
    with caplog.at_level(logging.WARNING, logger="rlm_local"):
        rlm, engine = make(["FINAL(ok)"], levers={"constrain": True})
    assert rlm.settings.levers.constrain is False
    assert [r.getMessage() for r in caplog.records if "constrain lever is off" in r.getMessage()]
    rlm.completion(DOC, "q")
    assert engine.requests[0].sampling.grammar is None


# ---- choosing levers ----------------------------------------------------------------------------------------
def test_levers_default_off_cards_turn_them_on_and_explicit_beats_both():
    assert Levers() == Levers(False, False, False, False, False)
    card = {"toolkit": True, "ground": True}
    assert Levers.resolve(card, None) == Levers(toolkit=True, ground=True)
    assert Levers.resolve(card, {"ground": False}) == Levers(toolkit=True)
    assert Levers.resolve(card, Levers(resample=True)) == Levers(resample=True)
    with pytest.raises(InputError, match="unknown lever"):
        Levers.resolve(None, {"tookit": True})
    assert parse_lever_flags(["toolkit=off", "ground=on"]) == {"toolkit": False, "ground": True}
    for bad in (["toolkit"], ["toolkit=maybe"], ["nope=on"]):
        with pytest.raises(InputError):
            parse_lever_flags(bad)


def test_the_quality_card_turns_on_what_helps_it():
    from rlm_local.models import find_card

    assert Levers.resolve(find_card("quality").extra["levers"], None).toolkit is True
    assert "levers" not in find_card("embedded").extra


def test_a_number_copied_from_a_distractor_line_is_sent_back_with_the_closer_line():
    doc = DOC + "The code for the north tower is 4471.\nThe code for the north gate is 9157.\n"
    rlm, engine = make([repl("hits = search('code for the north')"), "FINAL(4471)", "FINAL(9157)"], levers=ALL_ON)
    result = rlm.completion(doc, "What is the code for the north gate?")
    assert result.response == "9157" and result.iterations == 3
    told = last_user(roots(engine)[2])
    assert "another line you saw matches the question more closely" in told and "north gate is 9157" in told
    rlm, _ = make([repl("hits = search('code for the north')"), "FINAL(9157)"], levers=ALL_ON)
    assert rlm.completion(doc, "What is the code for the north gate?").iterations == 2  # the right line: taken


def test_a_grammar_the_engine_refuses_falls_back_to_unconstrained_replies(caplog):
    class Refusing(GrammarEngine):
        def generate(self, requests, deadline=None):
            from rlm_local.engines import Result

            if any(r.sampling.grammar for r in requests):
                self.requests.extend(requests)
                return [Result.failed("llamacpp: failed to parse grammar") for _ in requests]
            return super().generate(requests, deadline)

    engine = Refusing([repl("print(1)"), "FINAL(ok)"])
    with caplog.at_level(logging.WARNING, logger="rlm_local"):
        result = RLM(backend="scripted", engine=engine, levers={"constrain": True}).completion(DOC, "q")
    assert result.response == "ok" and result.stopped_reason == "final"
    assert any("refused the reply grammar" in r.getMessage() for r in caplog.records)
    assert [bool(r.sampling.grammar) for r in engine.requests] == [True, False, False]
