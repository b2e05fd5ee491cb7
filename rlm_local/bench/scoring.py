"""Scoring rules shared by the families, after the paper's (OOLONG's) conventions.

Guarantees: every function returns a float in [0, 1]; none raises on arbitrary model text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_PAIR = re.compile(r"\(?\s*(\d+)\s*,\s*(\d+)\s*\)?")


def after_last_colon(answer: str) -> str:
    """OOLONG reads the text after the last ':' (the model is asked for 'Answer: ...'); stripped, lower case,
    quotes and trailing punctuation removed."""
    text = (answer or "").rsplit(":", 1)[-1] if ":" in (answer or "") else (answer or "")
    return text.strip().strip("\"'`*").strip().rstrip(".!").strip().lower()


def exact_label(answer: str, gold: str) -> float:
    return 1.0 if after_last_colon(answer) == gold.lower() else 0.0


def numeric(answer: str, gold: int) -> float:
    """0.75 ** |error| on the first number after the last ':' (or anywhere, when there is none there)."""
    found = _NUMBER.findall(after_last_colon(answer)) or _NUMBER.findall(answer or "")
    if not found:
        return 0.0
    return 0.75 ** abs(float(found[0]) - gold)


def by_phrase(answer: str, gold: str, phrases: Iterable[str]) -> float:
    """1 when the gold phrase is the only one of ``phrases`` the answer contains."""
    text = " ".join((answer or "").lower().split())
    present = [p for p in phrases if p in text]
    return 1.0 if present == [gold] else 0.0


def parse_pairs(answer: str) -> set[tuple[int, int]]:
    """Every '(a, b)' in the answer as an ordered pair (min, max); self-pairs dropped."""
    pairs = set()
    for a, b in _PAIR.findall(answer or ""):
        x, y = int(a), int(b)
        if x != y:
            pairs.add((min(x, y), max(x, y)))
    return pairs


def f1(predicted: set, gold: set) -> float:
    """F1 over sets; two empty sets agree perfectly."""
    if not predicted and not gold:
        return 1.0
    hits = len(predicted & gold)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(predicted), hits / len(gold)
    return 2 * precision * recall / (precision + recall)


def choice_letter(answer: str, letters: str = "ABCD") -> str | None:
    """The chosen option: the first standalone letter among ``letters`` after the last ':' (else anywhere)."""
    for text in ((answer or "").rsplit(":", 1)[-1], answer or ""):
        m = re.search(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text)
        if m:
            return m.group(1)
    return None
