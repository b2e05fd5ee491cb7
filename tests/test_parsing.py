from rlm_local.loop.parsing import parse_reply


def test_repl_and_python_fences_in_order():
    p = parse_reply("a\n```repl\nx = 1\n```\ntext\n```python\nprint(x)\n```\n")
    assert p.code_blocks == ["x = 1", "print(x)"]
    assert not p.has_final


def test_unclosed_last_fence_still_runs():
    assert parse_reply("```python\nprint(2)\n").code_blocks == ["print(2)"]


def test_bare_fence_runs_only_if_python():
    assert parse_reply("```\nprint(3)\n```").code_blocks == ["print(3)"]
    assert parse_reply("```\nOutput: [1, 2\n```").code_blocks == []
    assert parse_reply('```json\n{"a": 1}\n```').code_blocks == []


def test_final_forms_in_text():
    assert parse_reply("So:\nFINAL(42)").final_answer == "42"
    assert parse_reply('FINAL("The answer is A")').final_answer == "The answer is A"
    assert parse_reply("FINAL(Paris, France)").final_answer == "Paris, France"
    assert parse_reply("  FINAL_VAR(result)  ").final_var == "result"
    assert parse_reply("FINAL_VAR('result')").final_var == "result"


def test_final_inside_code_is_not_text_final():
    p = parse_reply("```repl\nFINAL(x)\n```")
    assert p.final_answer is None and p.code_blocks == ["FINAL(x)"]


def test_final_mentioned_mid_sentence_is_not_an_answer():
    assert parse_reply("I will call FINAL(answer) when done.").final_answer is None
    assert parse_reply("").code_blocks == [] and not parse_reply("").has_final


def test_multiline_final():
    assert parse_reply("FINAL(line one\nline two)").final_answer == "line one\nline two"


def test_other_fence_tags_do_not_swallow_code():
    p = parse_reply('```json\n{"a": 1}\n```\nNow:\n```repl\nprint(len(context))\n```')
    assert p.code_blocks == ["print(len(context))"]
    assert parse_reply("```text\nprint(1)\n```").code_blocks == []


def test_final_stops_at_its_own_line():
    assert parse_reply("FINAL(42)\nNote: verified with llm_query(chunk)").final_answer == "42"
    assert parse_reply('FINAL("a")\nFINAL("b")').final_answer == "a"
