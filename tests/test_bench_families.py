"""Benchmark families: deterministic generators, scorers against hand-made cases, gold from the data."""

from __future__ import annotations

import ast
import itertools
from collections import Counter
from pathlib import Path

import pytest

from rlm_local.bench import BenchError, codeqa, family, niah, oolong, pairs, parse_length, scoring
from rlm_local.bench.instances import INSTANCES, LABELS, label_of
from rlm_local.bench.items import Item

FAMILIES = ("niah", "oolong", "pairs", "codeqa")


@pytest.mark.parametrize("name", FAMILIES)
def test_generators_are_deterministic_and_sized(name):
    a = family(name).generate(3000, 2, seed=5)
    b = family(name).generate(3000, 2, seed=5)
    assert [(i.context, i.question, i.gold, i.seed) for i in a] == [(i.context, i.question, i.gold, i.seed) for i in b]
    c = family(name).generate(3000, 2, seed=6)
    assert [i.context for i in a] != [i.context for i in c]
    assert a[0].context != a[1].context  # items of one sweep differ
    for item in a:
        assert item.length_chars == len(item.context)
        assert 0.7 * 12_000 <= item.length_chars <= 1.3 * 12_000  # 3,000 tokens at ~4 characters a token
        assert item.record().keys() >= {"seed", "length_tokens", "length_chars", "gold", "question"}
        assert "context" not in item.record()


def test_lengths_and_unknown_family():
    assert parse_length("8k") == 8000 and parse_length("1m") == 1_000_000 and parse_length("4096") == 4096
    for bad in ("5", "20m", "abc", "-3k"):
        with pytest.raises(BenchError):
            parse_length(bad)
    with pytest.raises(BenchError, match="unknown family"):
        family("browsecomp")


# ---- niah ------------------------------------------------------------------------------------------------
def test_niah_needle_distractors_and_strict_score():
    item = niah.make_item(4000, 0, seed=1)
    key, gold = item.meta["key"], item.gold
    assert item.context.count(f"special magic numbers for {key} is: {gold}.") == 1
    for d in item.meta["distractors"]:
        assert d != key and f"special magic numbers for {d} is:" in item.context
    assert niah.score(item, f"Answer: {gold}") == 1.0
    assert niah.score(item, f"The number is {gold}.") == 1.0
    assert niah.score(item, "Answer: 1234567") == 0.0
    assert niah.score(item, f"{gold} or 1234567") == 0.0  # strict: listing every number does not count
    assert niah.score(item, f"{gold}9") == 0.0  # an 8-digit number is not the gold
    assert niah.score(item, "") == 0.0


# ---- oolong ----------------------------------------------------------------------------------------------
def test_instances_have_one_label_each_and_labels_are_not_written():
    assert set(INSTANCES.values()) == set(LABELS)
    for text, label in INSTANCES.items():
        assert label_of(text) == label
        assert label not in text.lower()


def _records(item: Item) -> list[tuple[str, int, str]]:
    out = []
    for line in item.context.split("\n"):
        d, u, inst = line.split(" || ")
        out.append((d.removeprefix("Date: "), int(u.removeprefix("User: ")), label_of(inst.removeprefix("Instance: "))))
    return out


def test_oolong_gold_matches_the_lines():
    seen = set()
    for item in oolong.generate(3000, 12, seed=2):
        spec, gold = item.meta["spec"], item.gold
        seen.add(spec["kind"])
        rows = _records(item)
        counts = Counter(lab for _, _, lab in rows)
        if spec["kind"] == "most":
            assert gold["value"] == max(LABELS, key=lambda lab: counts[lab])
        elif spec["kind"] == "count":
            assert gold["value"] == counts[spec["label"]]
        elif spec["kind"] == "user":
            assert gold["value"] == sum(1 for _, u, lab in rows if u == spec["user"] and lab == spec["label"])
        elif spec["kind"] == "month":
            mon, year = spec["month"].split()
            assert gold["value"] == sum(
                1 for d, _, lab in rows if d.startswith(mon) and d.endswith(year) and lab == spec["label"]
            )
    assert seen == set(oolong.KINDS)


def _item(gold, fam="oolong") -> Item:
    return Item(
        family=fam, item_id="x", seed=0, length_tokens=1000, length_chars=1, context="x", question="q", gold=gold
    )


def test_oolong_scoring_rules():
    label = _item({"type": "label", "value": "location"})
    assert oolong.score(label, "Answer: location") == 1.0
    assert oolong.score(label, "The answer is: Location.") == 1.0
    assert oolong.score(label, "Answer: human") == 0.0
    assert oolong.score(label, "Answer: location or human") == 0.0
    number = _item({"type": "number", "value": 10})
    assert oolong.score(number, "Answer: 10") == 1.0
    assert oolong.score(number, "Answer: 12") == pytest.approx(0.75**2)
    assert oolong.score(number, "Answer: 7") == pytest.approx(0.75**3)
    assert oolong.score(number, "Answer: none") == 0.0
    phrase = _item({"type": "phrase", "value": "less common than"})
    assert oolong.score(phrase, "Answer: entity is less common than human") == 1.0
    assert oolong.score(phrase, "Answer: entity is more common than human") == 0.0
    assert oolong.score(phrase, "more common than or less common than") == 0.0


# ---- pairs -----------------------------------------------------------------------------------------------
def test_pairs_gold_and_f1():
    for item in pairs.generate(3000, 5, seed=3):
        per_user: dict[int, Counter] = {}
        for _, u, lab in _records(item):
            per_user.setdefault(u, Counter())[lab] += 1
        gold = pairs.gold_pairs(per_user, item.meta["predicate"], item.meta["label"], item.meta["other"])
        assert {tuple(p) for p in item.gold} == gold
        all_pairs = len(per_user) * (len(per_user) - 1) // 2
        assert 0 < len(gold) < all_pairs
        assert all(a < b for a, b in gold)
    item = _item([[1, 2], [3, 4]], "pairs")
    assert pairs.score(item, "Answer: (1, 2), (3, 4)") == 1.0
    assert pairs.score(item, "Answer: (2, 1), (4,3)") == 1.0  # order within a pair does not matter
    assert pairs.score(item, "Answer: (1, 2)") == pytest.approx(2 / 3)  # P=1, R=1/2
    assert pairs.score(item, "Answer: (1, 2), (3, 4), (5, 6), (7, 8)") == pytest.approx(2 / 3)  # P=1/2, R=1
    assert pairs.score(item, "Answer: none") == 0.0
    assert scoring.f1(set(), set()) == 1.0


# ---- codeqa ----------------------------------------------------------------------------------------------
def test_codeqa_gold_is_what_the_source_says(tmp_path: Path):
    for i in range(4):
        (tmp_path / f"mod{i}.py").write_text(
            f"import os\n\n\ndef helper_{i}(x):\n    return x\n\n\nclass Thing{i}:\n    def method_{i}(self):\n"
            f"        return {i}\n\n    def shared(self):\n        return 0\n" + "# filler\n" * 300
        )
    items = codeqa.generate(1500, 6, seed=1, source=tmp_path)
    for item in items:
        name, options = item.meta["name"], item.meta["options"]
        answer = options["ABCD".index(item.gold)]
        assert name != "shared"  # defined in every file: never asked
        if item.meta["kind"] == "func_file":
            tree = ast.parse((tmp_path / answer).read_text())
            assert any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)
        else:
            assert answer == f"Thing{name.split('_')[1]}"
    assert {it.meta["kind"] for it in items} == {"func_file", "method_class"}
    item = items[0]
    wrong = next(c for c in "ABCD"[: len(item.meta["options"])] if c != item.gold)
    assert codeqa.score(item, f"Answer: {item.gold}") == 1.0
    assert codeqa.score(item, f"The answer is ({item.gold}).") == 1.0
    assert codeqa.score(item, f"Answer: {wrong}") == 0.0
    assert codeqa.score(item, "I do not know") == 0.0


def test_codeqa_refuses_lengths_the_source_cannot_fill(tmp_path: Path):
    (tmp_path / "a.py").write_text("def f():\n    pass\n")
    with pytest.raises(BenchError, match="holds only"):
        codeqa.generate(8000, 1, source=tmp_path)


def test_codeqa_on_the_standard_library():
    item = codeqa.make_item(4000, 1, seed=0)
    assert len(item.meta["files"]) >= 3 and item.gold in "ABCD"
    assert all(f"### FILE: {f}\n" in item.context for f in item.meta["files"])


def test_scoring_never_raises_on_odd_text():
    for text, fn in itertools.product(
        ["", ":", "::::", "Answer:", "(1,", "\x00", "Answer: -"],
        [scoring.after_last_colon, scoring.parse_pairs, scoring.choice_letter],
    ):
        fn(text)
    assert scoring.numeric("Answer: -", 3) == 0.0
