"""Generated long documents with one planted fact (needle-in-a-haystack, RULER S-NIAH style).

Used by the CLI demo and by scripts/eval_niah.py. The filler is varied report-like prose, one sentence a
line, drawn from a seeded generator so every task is reproducible; the needle is a sentence of the form
"The special magic number for <key> is: <7 digits>." planted at a chosen depth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_SUBJECTS = [
    "The committee",
    "The harbour office",
    "A local farmer",
    "The survey team",
    "The night shift",
    "The museum curator",
    "A visiting engineer",
    "The school board",
    "The weather station",
    "The river authority",
    "The railway company",
    "A young botanist",
    "The town council",
    "The library staff",
    "The fishing fleet",
    "The mountain rescue team",
]
_VERBS = [
    "reported",
    "noted",
    "recorded",
    "observed",
    "discussed",
    "reviewed",
    "confirmed",
    "described",
    "questioned",
    "summarised",
]
_OBJECTS = [
    "a slight change in the tides",
    "the cost of repairing the old bridge",
    "an unusually dry spring",
    "the arrival of migrating geese",
    "a delay in the delivery of timber",
    "the results of the annual census",
    "a new schedule for the ferry",
    "the condition of the northern road",
    "the price of wheat at the market",
    "a shortage of lamp oil",
    "the planting of two hundred oak trees",
    "a dispute over grazing rights",
    "the repainting of the lighthouse",
    "the collapse of an old barn",
    "a festival planned for autumn",
]
_TAILS = [
    "after a long meeting.",
    "without further comment.",
    "in the quarterly bulletin.",
    "to general surprise.",
    "as expected.",
    "for the third time this year.",
    "in a short letter.",
    "before the winter came.",
    "with some concern.",
    "at the request of the mayor.",
]

KEYS = [
    "amber falcon",
    "silver lantern",
    "quiet meadow",
    "copper harbor",
    "velvet orchard",
    "granite bell",
    "crimson kettle",
    "hollow pine",
    "marble compass",
    "electric heron",
    "woolen anchor",
    "paper volcano",
    "frozen violin",
    "golden tunnel",
    "rusty comet",
]


@dataclass(frozen=True)
class NeedleTask:
    context: str
    question: str
    answer: str
    key: str
    depth: float  # 0.0 = start of the document, 1.0 = end
    length: int  # characters

    def is_correct(self, response: str) -> bool:
        """RULER's scoring: the number appears in the answer."""
        return self.answer in (response or "")


def filler_lines(rng: random.Random, n_chars: int) -> list[str]:
    lines: list[str] = []
    total = 0
    while total < n_chars:
        line = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
        lines.append(line)
        total += len(line) + 1
    return lines


def make_needle_task(length: int = 100_000, depth: float = 0.5, seed: int = 0, key: str | None = None) -> NeedleTask:
    """A document of about ``length`` characters with one needle at ``depth``."""
    if length < 1000:
        raise ValueError("a haystack needs at least 1,000 characters")
    if not 0.0 <= depth <= 1.0:
        raise ValueError("depth must be between 0 and 1")
    rng = random.Random(seed)
    key = key or rng.choice(KEYS)
    number = str(rng.randint(1_000_000, 9_999_999))
    lines = filler_lines(rng, length)
    needle = f"The special magic number for {key} is: {number}."
    lines.insert(int(round(depth * len(lines))), needle)
    question = f"What is the special magic number for {key}?"
    return NeedleTask(context="\n".join(lines), question=question, answer=number, key=key, depth=depth, length=length)


def needle_suite(
    n: int = 10, min_length: int = 50_000, max_length: int = 500_000, seed: int = 1234
) -> list[NeedleTask]:
    """``n`` tasks with different keys, evenly spread depths and lengths growing from min to max."""
    tasks = []
    for i in range(n):
        frac = i / max(1, n - 1)
        length = int(min_length + frac * (max_length - min_length))
        depth = round((i * 0.37 + 0.05) % 1.0, 2)  # a fixed scatter of depths across the document
        tasks.append(make_needle_task(length=length, depth=depth, seed=seed + i, key=KEYS[i % len(KEYS)]))
    return tasks
