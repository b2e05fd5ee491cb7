"""``niah``: RULER-style single needle in a haystack, made harder with distractors: the one needle generator and
scorer of the project (the benchmark family, the CLI demo, tests and evaluation scripts all use it).

The haystack is report-like filler, one sentence a line, in which some lines carry 7-digit numbers; a few
distractor needles use near-identical keys (same adjective or same noun as the real key). The needle is
"One of the special magic numbers for <key> is: <7 digits>." at a seeded depth.
Score (strict RULER): 1 when the gold number appears in the answer and no other 7-digit number does.

``make_item`` makes a benchmark item (length in tokens, everything seeded by the item's index);
``make_needle_task`` a standalone task (length in characters, a chosen depth and key, distractors optional)
for the demo and the scripts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

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
    key = f"{rng.choice(_ADJ)} {rng.choice(_NOUN)}"
    distractors = rng.sample(_near(key), n_distractors)
    number = str(rng.randint(1_000_000, 9_999_999))
    lines = _filler(rng, length_tokens * CHARS_PER_TOKEN)
    depth = round(rng.uniform(0.05, 0.95), 3)
    context = _plant(rng, lines, key, number, depth, distractors)
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


def _near(key: str) -> list[str]:
    """Keys that share the adjective or the noun of ``key``: the distractors."""
    adj, _, noun = key.partition(" ")
    return [f"{adj} {n}" for n in _NOUN if n != noun] + [f"{a} {noun}" for a in _ADJ if a != adj]


def _plant(rng: random.Random, lines: list[str], key: str, number: str, depth: float, distractors: list[str]) -> str:
    """The distractor needles at random lines and the needle at ``depth``, joined into the document."""
    for d in distractors:
        lines.insert(
            rng.randrange(len(lines) + 1),
            f"One of the special magic numbers for {d} is: {rng.randint(1_000_000, 9_999_999)}.",
        )
    lines.insert(int(depth * len(lines)), f"One of the special magic numbers for {key} is: {number}.")
    return "\n".join(lines)


@dataclass(frozen=True)
class NeedleTask:
    """A standalone needle task (the demo's, the scripts'); scored like the benchmark family."""

    context: str
    question: str
    answer: str
    key: str
    depth: float  # 0.0 = start of the document, 1.0 = end
    length: int  # characters

    def is_correct(self, response: str) -> bool:
        return score_answer(self.answer, response) == 1.0


def make_needle_task(
    length: int = 100_000, depth: float = 0.5, seed: int = 0, key: str | None = None, distractors: int = 0
) -> NeedleTask:
    """A document of about ``length`` characters with one needle at ``depth`` (and ``distractors`` needles with
    near-identical keys); ValueError for a length under 1,000 characters or a depth outside [0, 1]."""
    if length < 1000:
        raise ValueError("a haystack needs at least 1,000 characters")
    if not 0.0 <= depth <= 1.0:
        raise ValueError("depth must be between 0 and 1")
    rng = random.Random(seed)
    key = key or f"{rng.choice(_ADJ)} {rng.choice(_NOUN)}"
    number = str(rng.randint(1_000_000, 9_999_999))
    lines = _filler(rng, length)
    context = _plant(rng, lines, key, number, depth, rng.sample(_near(key), distractors))
    question = f"What is the special magic number for {key}?"
    return NeedleTask(context=context, question=question, answer=number, key=key, depth=depth, length=length)


def needle_suite(
    n: int = 10, min_length: int = 50_000, max_length: int = 500_000, seed: int = 1234
) -> list[NeedleTask]:
    """``n`` tasks with different keys, evenly spread depths and lengths growing from min to max."""
    tasks = []
    for i in range(n):
        frac = i / max(1, n - 1)
        length = int(min_length + frac * (max_length - min_length))
        depth = round((i * 0.37 + 0.05) % 1.0, 2)  # a fixed scatter of depths across the document
        key = f"{_ADJ[i % len(_ADJ)]} {_NOUN[(3 * i) % len(_NOUN)]}"
        tasks.append(make_needle_task(length=length, depth=depth, seed=seed + i, key=key))
    return tasks


def generate(length_tokens: int, n: int, seed: int = 0, **_: object) -> list[Item]:
    return [make_item(length_tokens, i, seed) for i in range(n)]


def score_answer(gold: str, answer: str | None) -> float:
    numbers = set(_NUMBER.findall(answer or ""))
    return 1.0 if numbers == {gold} else 0.0


def score(item: Item, answer: str) -> float:
    return score_answer(item.gold, answer)


def oracle_code(item: Item) -> str:
    """Correct REPL code for the item: a regex for the exact key."""
    key = item.meta["key"]
    return (
        f"import re\nm = re.search(r'special magic numbers for {key} is: (\\d+)', context)\n"
        "FINAL('Answer: ' + m.group(1))"
    )


def oracle_sub(prompt: str) -> str | None:
    return None  # the oracle needs no sub-calls
