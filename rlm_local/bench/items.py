"""Benchmark items, the family registry and the length grammar shared by every family.

An :class:`Item` is one question over one generated context, with everything needed to reproduce it
(family, seed, requested length) and to score it (gold). Families are looked up by name; each one is a
module exposing ``make_item(length_tokens, index, seed, **options) -> Item`` (options a family does not
use are ignored, e.g. codeqa's ``source``), ``generate(length_tokens, n, seed, **options)``,
``score(item, answer)`` (a float in [0, 1]) and the oracle hooks (``oracle_code``, ``oracle_sub``).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from ..errors import BenchError

FAMILIES = ("niah", "oolong", "pairs", "codeqa")
METHODS = ("base", "rlm-nosub", "rlm", "summary")  # in the order tables and plots show them
CHARS_PER_TOKEN = 4  # generators size contexts in characters; the runner counts real tokens per engine
MIN_TOKENS, MAX_TOKENS = 1_000, 10_000_000


@dataclass
class Item:
    """One benchmark question. ``item_id`` is stable across runs (family, length, index, seed), so a resumed
    sweep recognises finished rows. ``gold`` is JSON-ready; ``meta`` holds what scoring or analysis needs."""

    family: str
    item_id: str
    seed: int
    length_tokens: int  # the requested length
    length_chars: int  # the generated context's real length
    context: str
    question: str
    gold: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The item without its context (what a results row keeps)."""
        row = asdict(self)
        row.pop("context")
        return row


def family(name: str) -> ModuleType:
    """The module of a task family, or BenchError naming the known ones."""
    if name not in FAMILIES:
        raise BenchError(f"unknown family {name!r}; choose one of: {', '.join(FAMILIES)}")
    return importlib.import_module(f".{name}", __package__)


def parse_length(text: str) -> int:
    """'8k' -> 8000, '1m' -> 1000000, '4096' -> 4096 (tokens); BenchError outside 1K..10M tokens."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(text))
    if not m:
        raise BenchError(f"cannot read length {text!r}; write tokens like 8k, 32k, 1m or 4096")
    value = int(float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()])
    if not MIN_TOKENS <= value <= MAX_TOKENS:
        raise BenchError(
            f"length {text!r} = {value:,} tokens cannot be generated: use {MIN_TOKENS:,} to {MAX_TOKENS:,} tokens"
        )
    return value


def item_id(family_name: str, length_tokens: int, index: int, seed: int) -> str:
    return f"{family_name}-{length_tokens}-{index}-s{seed}"


def item_seed(seed: int, length_tokens: int, index: int) -> int:
    """A per-item seed: items at different lengths and indices are independent, and the same arguments
    always give the same item."""
    return (seed * 1_000_003 + length_tokens * 7_919 + index) % (2**31)
