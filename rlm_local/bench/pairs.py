"""``pairs``: OOLONG-Pairs style questions over pairs of users, on the same kind of log as ``oolong``.

Each question is a predicate over the hidden labels of two users' instances; the gold is the set of user
pairs (smaller id first) for which it holds, never empty and never every pair. Score: F1 over pairs.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

from . import oolong, scoring
from .instances import LABELS
from .items import CHARS_PER_TOKEN, Item, item_id, item_seed
from .oolong import ORACLE_READ, PREAMBLE, make_records

NAME = "pairs"
# Each item's answer needs a judgement per record (its label is never written): an RLM should delegate it.
NEEDS_SUBCALLS = True
# predicate name -> (question text with {x} {y}, test on the two users' label counters)
PREDICATES = {
    "both": ("both users have at least one instance labelled {x}", lambda a, b, x, y: a[x] > 0 and b[x] > 0),
    "neither": ("neither user has any instance labelled {x}", lambda a, b, x, y: a[x] == 0 and b[x] == 0),
    "one": (
        "exactly one of the two users has at least one instance labelled {x}",
        lambda a, b, x, y: (a[x] > 0) != (b[x] > 0),
    ),
    "both_xy": (
        "each user has at least one instance labelled {x} and at least one labelled {y}",
        lambda a, b, x, y: min(a[x], a[y], b[x], b[y]) > 0,
    ),
    "more": (
        "each user has more instances labelled {x} than labelled {y}",
        lambda a, b, x, y: a[x] > a[y] and b[x] > b[y],
    ),
}
# The same tests as Python source, for the oracle's code (counts per user: c[u][label]).
_ORACLE_TESTS = {
    "both": "c[a][x] > 0 and c[b][x] > 0",
    "neither": "c[a][x] == 0 and c[b][x] == 0",
    "one": "(c[a][x] > 0) != (c[b][x] > 0)",
    "both_xy": "min(c[a][x], c[a][y], c[b][x], c[b][y]) > 0",
    "more": "c[a][x] > c[a][y] and c[b][x] > c[b][y]",
}


def gold_pairs(per_user: dict[int, Counter], predicate: str, x: str, y: str) -> set[tuple[int, int]]:
    test = PREDICATES[predicate][1]
    return {(a, b) for a, b in itertools.combinations(sorted(per_user), 2) if test(per_user[a], per_user[b], x, y)}


def make_item(length_tokens: int, index: int, seed: int, **_: object) -> Item:
    s = item_seed(seed, length_tokens, index)
    rng = random.Random(s)
    records = make_records(rng, length_tokens * CHARS_PER_TOKEN, n_users=rng.randint(6, 10))
    per_user: dict[int, Counter] = {}
    for r in records:
        per_user.setdefault(r.user, Counter())[r.label] += 1
    n_all = len(per_user) * (len(per_user) - 1) // 2
    names = list(PREDICATES)
    y: str | None  # the second label; None when the question does not use it
    choice = None
    for attempt in range(200):  # the index picks the predicate first; labels are redrawn until non-trivial
        predicate = names[(index + attempt // 40) % len(names)]
        x, y = rng.sample(LABELS, 2)
        gold = gold_pairs(per_user, predicate, x, y)
        if 0 < len(gold) < n_all:
            choice = (predicate, x, y, gold)
            break
    if choice is None:
        raise AssertionError(f"pairs: no non-trivial predicate for seed {s}")  # not reached in practice
    predicate, x, y, gold = choice
    if "{y}" not in PREDICATES[predicate][0]:
        y = None  # not part of the question, so not part of the item (equal questions, equal items)
    question = (
        PREAMBLE
        + "List every pair of distinct users such that "
        + PREDICATES[predicate][0].format(x=x, y=y)
        + ". Write each pair as (smaller user id, larger user id). Answer as 'Answer: (id1, id2), (id3, id4), ...'."
    )
    context = "\n".join(r.line() for r in records)
    return Item(
        family=NAME,
        item_id=item_id(NAME, length_tokens, index, seed),
        seed=s,
        length_tokens=length_tokens,
        length_chars=len(context),
        context=context,
        question=question,
        gold=sorted(map(list, gold)),
        meta={"predicate": predicate, "label": x, "other": y, "users": len(per_user), "lines": len(records)},
    )


def generate(length_tokens: int, n: int, seed: int = 0, **_: object) -> list[Item]:
    return [make_item(length_tokens, i, seed) for i in range(n)]


def score(item: Item, answer: str) -> float:
    return scoring.f1(scoring.parse_pairs(answer), {tuple(p) for p in item.gold})


def oracle_code(item: Item) -> str:
    m = item.meta
    return (
        ORACLE_READ
        + f"""import itertools
x, y = {m["label"]!r}, {m["other"]!r}
c = {{}}
for r, l in zip(rows, labels):
    c.setdefault(r[1], collections.Counter())[l] += 1
found = [(a, b) for a, b in itertools.combinations(sorted(c), 2) if {_ORACLE_TESTS[m["predicate"]]}]
FINAL('Answer: ' + ', '.join(f'({{a}}, {{b}})' for a, b in found))"""
    )


def oracle_sub(prompt: str) -> str | None:
    """The same oracle sub-model as oolong's: it labels instances."""
    return oolong.oracle_sub(prompt)
