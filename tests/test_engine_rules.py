"""The engine-side rules written once: prefix grouping (engines/prefix.py) and tokenizer/template rules
(engines/tokens.py), without a model."""

from __future__ import annotations

import pytest

from rlm_local.engines import Request
from rlm_local.engines.prefix import common_prefix_len, group_by_prefix, sibling_prefixes
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.engines.tokens import (
    adds_bos,
    chat_without_template,
    gemma_turns,
    is_gemma,
    plain_turns,
    prompt_format,
)
from rlm_local.errors import InputError

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


# ---- prefix grouping ---------------------------------------------------------------------------------------------
def test_common_prefix_of_strings_and_token_lists():
    assert common_prefix_len("abcdef" * 1000 + "x", "abcdef" * 1000 + "y") == 6000
    assert common_prefix_len(list(range(5000)) + [1], list(range(5000)) + [2]) == 5000
    assert common_prefix_len([], [1]) == 0 and common_prefix_len([1, 2], [1, 3]) == 1


def test_siblings_over_one_document_form_one_group():
    doc = list(range(300))
    seqs = [doc + [i] * 5 for i in range(4)] + [[7] * 50]
    groups = group_by_prefix(seqs, 64)
    assert sorted(len(g.members) for g in groups) == [1, 4]
    big = next(g for g in groups if len(g.members) == 4)
    assert sorted(big.members) == [0, 1, 2, 3] and big.shared == 300


def test_a_short_common_header_does_not_merge_two_documents():
    header = list(range(100))
    a = [header + list(range(1000, 1400)) + [i] for i in range(2)]
    b = [header + list(range(5000, 5400)) + [i] for i in range(2)]
    groups = group_by_prefix(a + b, 64)
    assert sorted(sorted(g.members) for g in groups) == [[0, 1], [2, 3]]
    assert all(g.shared == 500 for g in groups)
    # below the keep share (100 of 500 < half) the header alone would not be worth a group either way
    assert len(group_by_prefix(a + b, 64, keep=0.1)) == 1


def test_groups_respect_a_size_cap_and_spans_stay_together():
    doc = "x" * 400
    spans = [(doc + "a", doc + "b"), (doc + "c", doc + "d"), (doc + "e", doc + "f")]
    groups = group_by_prefix(spans, 64, spans=True, sizes=[2, 2, 2], max_size=4)
    assert [list(g.members) for g in groups] == [[0, 1], [2]]
    assert groups[1].shared == 400  # a span's own common prefix


def test_sibling_prefixes_leave_every_member_a_token_of_its_own():
    doc = list(range(100))
    seqs = [doc, doc + [1, 2]]
    (g,) = sibling_prefixes(seqs, 64)
    assert g.shared == 99 and sorted(g.members) == [0, 1]
    assert sibling_prefixes([doc[:70], doc[:70] + [5]], 70) == []  # 69 tokens left: below the minimum


def test_group_by_prefix_refuses_a_zero_minimum():
    with pytest.raises(ValueError):
        group_by_prefix([[1]], 0)
    assert group_by_prefix([], 8) == []


# ---- tokenizer and template rules --------------------------------------------------------------------------------
def test_bos_is_added_unless_the_text_starts_with_it():
    assert adds_bos("hello", "<bos>") and not adds_bos("<bos>hello", "<bos>")
    assert adds_bos("hello", None) and adds_bos("<s>x", "")


def test_chat_without_a_template_is_gemma_turns_for_gemma_only():
    assert is_gemma("gemma3") and is_gemma(None, "/x/gemma-3-270m.gguf") and not is_gemma("qwen2", None)
    assert chat_without_template(CHAT, "gemma3") == gemma_turns(CHAT)
    assert gemma_turns(CHAT) == "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert chat_without_template(CHAT, "llama") == plain_turns(CHAT) == "<system>\nBe brief.\n<user>\nHi\n<assistant>\n"
    # the base engine renders a chat the same plain way
    assert ScriptedEngine(["x"]).render(Request.chat(CHAT)) == plain_turns(CHAT)


def test_prompt_format_explicit_beats_card_beats_template():
    assert prompt_format("completion", "chat", True) == "completion"
    assert prompt_format(None, "completion", True) == "completion"
    assert prompt_format(None, None, True) == "chat" and prompt_format(None, None, False) == "completion"
    with pytest.raises(InputError, match="prompt_format"):
        prompt_format("markdown", None, True)


def test_old_template_import_paths_still_work():
    from rlm_local.engines.hf import gemma_turns as from_hf
    from rlm_local.engines.templates import gemma_turns as from_templates

    assert from_hf is gemma_turns and from_templates is gemma_turns
