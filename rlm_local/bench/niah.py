"""``niah``: RULER-style single needle in a haystack, made harder with distractors.

The haystack is report-like filler, one sentence a line, in which some lines carry 7-digit numbers; a few
distractor needles use near-identical keys (same adjective or same noun as the real key). The needle is
"One of the special magic numbers for <key> is: <7 digits>." at a seeded depth.
Score (strict RULER): 1 when the gold number appears in the answer and no other 7-digit number does.
"""

from __future__ import annotations

import random
import re

from .items import CHARS_PER_TOKEN, Item, item_id, item_seed

NAME = "niah"
_ADJ = [
    "amber",
    "silver",
    "quiet",
    "copper",
    "velvet",
    "granite",
    "crimson",
    "hollow",
    "marble",
    "electric",
    "woolen",
    "paper",
    "frozen",
    "golden",
    "rusty",
    "misty",
    "brave",
    "lunar",
    "sandy",
    "olive",
]
_NOUN = [
    "falcon",
    "lantern",
    "meadow",
    "harbor",
    "orchard",
    "bell",
    "kettle",
    "pine",
    "compass",
    "heron",
    "anchor",
    "volcano",
    "violin",
    "tunnel",
    "comet",
    "glacier",
    "saddle",
    "beacon",
    "quarry",
    "ribbon",
]
_SUBJECTS = [
    "The committee",
    "The harbour office",
    "A retired pilot",
    "The survey team",
    "The night shift",
    "The archive clerk",
    "A visiting engineer",
    "The school board",
    "The weather station",
    "The river authority",
    "The freight company",
    "A young chemist",
    "The town council",
]
_VERBS = ["reported", "noted", "logged", "observed", "discussed", "reviewed", "confirmed", "questioned"]
_OBJECTS = [
    "a change in the tides",
    "the cost of the bridge repairs",
    "an unusually dry spring",
    "the arrival of migrating geese",
    "a delay in the timber delivery",
    "the census results",
    "a new ferry timetable",
    "the state of the northern road",
    "the price of wheat",
    "a shortage of lamp oil",
    "the planting of oak trees",
    "a dispute over grazing rights",
]
_TAILS = [
    "after a long meeting.",
    "without comment.",
    "in the quarterly bulletin.",
    "to general surprise.",
    "as expected.",
    "for the third time this year.",
    "in a short letter.",
    "with some concern.",
]
_NUMBER = re.compile(r"(?<!\d)\d{7}(?!\d)")


def _filler(rng: random.Random, n_chars: int) -> list[str]:
    lines, total = [], 0
    while total < n_chars:
        if rng.random() < 0.08:  # numbers in the filler: the answer cannot be "the only 7-digit number"
            line = f"{rng.choice(_SUBJECTS)} filed record {rng.randint(1_000_000, 9_999_999)} {rng.choice(_TAILS)}"
        else:
            line = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
        lines.append(line)
        total += len(line) + 1
    return lines


def make_item(length_tokens: int, index: int, seed: int, n_distractors: int = 4, **_: object) -> Item:
    s = item_seed(seed, length_tokens, index)
    rng = random.Random(s)
    adj, noun = rng.choice(_ADJ), rng.choice(_NOUN)
    key = f"{adj} {noun}"
    near = [f"{adj} {n}" for n in _NOUN if n != noun] + [f"{a} {noun}" for a in _ADJ if a != adj]
    distractors = rng.sample(near, n_distractors)
    number = str(rng.randint(1_000_000, 9_999_999))
    lines = _filler(rng, length_tokens * CHARS_PER_TOKEN)
    depth = round(rng.uniform(0.05, 0.95), 3)
    for d in distractors:
        lines.insert(
            rng.randrange(len(lines) + 1),
            f"One of the special magic numbers for {d} is: {rng.randint(1_000_000, 9_999_999)}.",
        )
    lines.insert(int(depth * len(lines)), f"One of the special magic numbers for {key} is: {number}.")
    context = "\n".join(lines)
    question = (
        f"What is the special magic number for {key} mentioned in the text? "
        "Reply with the number only, as 'Answer: <number>'."
    )
    return Item(
        family=NAME,
        item_id=item_id(NAME, length_tokens, index, seed),
        seed=s,
        length_tokens=length_tokens,
        length_chars=len(context),
        context=context,
        question=question,
        gold=number,
        meta={"key": key, "depth": depth, "distractors": distractors},
    )


def generate(length_tokens: int, n: int, seed: int = 0, **_: object) -> list[Item]:
    return [make_item(length_tokens, i, seed) for i in range(n)]


def score(item: Item, answer: str) -> float:
    numbers = set(_NUMBER.findall(answer or ""))
    return 1.0 if numbers == {item.gold} else 0.0


def oracle_code(item: Item) -> str:
    """Correct REPL code for the item: a regex for the exact key."""
    key = item.meta["key"]
    return (
        f"import re\nm = re.search(r'special magic numbers for {key} is: (\\d+)', context)\n"
        "FINAL('Answer: ' + m.group(1))"
    )


def oracle_sub(prompt: str) -> str | None:
    return None  # the oracle needs no sub-calls
