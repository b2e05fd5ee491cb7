"""Keeping a small instruction model on track: runaway replies, repeated turns, prose answers.

Measured with Qwen2.5-Coder-1.5B-Instruct on llama.cpp (issue 11): it repeated the identical reply and
output 8 times under the same nudge; one 2,048-token reply that looped on the same lines ate a 600 s
budget; it answered in prose in the question's format and never called FINAL. Each piece here is pure
text logic; ``Run`` (run.py) applies it, one ``Steering`` per (sub-)run.

Guarantees:
- ``cut_runaway`` only cuts text that repeats one unit (a line, a block of lines or a phrase of at least
  ``MIN_UNIT`` characters) at least ``MIN_REPEATS`` times in a row over at least ``MIN_SPAN`` characters;
  the reply keeps everything before the loop and the unit once. Ordinary code (a ruler of "=", a few
  similar prints) is never cut.
- A repeated turn is one whose reply is the same as one of the last ``WINDOW`` replies after collapsing
  whitespace, or at least ``SIMILAR`` alike (difflib ratio), with the same feedback; the nudge escalates with each repeat in
  a row: point out the repetition, ask for a different approach, ask for FINAL with the best answer.
- A prose reply is accepted as the answer only by ``final.plain_answer`` rules (see there), and only once
  the model has run code in this run or has been asked once to use FINAL.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field

from . import final, prompts

MIN_UNIT = 4  # characters in the repeated unit
MIN_REPEATS = 6  # times in a row
MIN_SPAN = 240  # characters the loop covers in all
SIMILAR = 0.92  # difflib ratio for a "near-identical" reply
WINDOW = 3  # a turn repeats when it matches one of the last WINDOW turns
COMPARE_CHARS = 4000  # replies are compared on their first characters (difflib is quadratic)
MAX_UNIT = 400  # characters: longer loops are left to the max_tokens cap
PROSE_TURNS = 2  # prose replies in a row (no code, no FINAL) before a plain prose answer is taken
GRAM = 8  # characters of the probes that find a loop's period
MAX_PROBES = 64  # most frequent probes examined (the cut must stay cheap on every reply)


def cut_runaway(text: str) -> tuple[str, str | None]:
    """``text`` cut after the first time of a runaway repetition, and a note for the model (None: kept)."""
    found = _find_loop(text)
    if found is None:
        return text, None
    start, unit, times = found
    shown = " ".join(unit.split())[:80]
    return (text[: start + len(unit)], prompts.RUNAWAY_NOTE.replace("TIMES", str(times)).replace("UNIT", shown))


def _find_loop(text: str) -> tuple[int, str, int] | None:
    """(start, unit, times) of the earliest qualifying loop, or None. Linear-ish: the period of a loop is
    a gap between occurrences of one of its GRAM-character probes, and every probe of a loop repeats at
    least MIN_REPEATS times, so only the most frequent probes and their gaps are checked (a regex for
    "any unit repeated" took seconds on a 12,000-character reply)."""
    if len(text) < MIN_SPAN:
        return None
    counts = Counter(text[i : i + GRAM] for i in range(len(text) - GRAM + 1))
    best: tuple[int, str, int] | None = None
    for gram, count in counts.most_common(MAX_PROBES):
        if count < MIN_REPEATS:
            break
        positions = [m.start() for m in re.finditer(f"(?={re.escape(gram)})", text)]
        for a, b in zip(positions, positions[1:]):
            period = b - a
            if not MIN_UNIT <= period <= MAX_UNIT:
                continue
            start = a
            while start >= period and text[start - 1] == text[start - 1 + period]:
                start -= 1  # the loop began earlier than this probe
            unit = text[start : start + period]
            times = 1
            while text.startswith(unit, start + times * period):
                times += 1
            if times >= MIN_REPEATS and times * period >= MIN_SPAN and len(set(unit.strip())) >= 3:
                if best is None or start < best[0]:
                    best = (start, unit, times)
                break  # one period per probe is enough
    return best


def _normal(text: str) -> str:
    return " ".join(text.split())[:COMPARE_CHARS]


def alike(a: str, b: str) -> bool:
    """Identical after collapsing whitespace, or near-identical (difflib ratio >= SIMILAR)."""
    a, b = _normal(a), _normal(b)
    if a == b:
        return True
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return matcher.real_quick_ratio() >= SIMILAR and matcher.quick_ratio() >= SIMILAR and matcher.ratio() >= SIMILAR


@dataclass
class Steering:
    """What one run remembers to steer its model: the last turn, repeats in a row, prose turns in a row."""

    repeats: int = 0
    prose_turns: int = 0
    cells_run: int = 0
    recent: list[tuple[str, str]] = field(default_factory=list)  # the last WINDOW (reply, feedback) turns
    last_prose: str | None = None  # the previous reply of the current prose streak
    notes: list[str] = field(default_factory=list)  # for the next feedback (a runaway cut, a cut reply)

    def feedback(self, reply: str, feedback: str) -> str:
        """Call once per turn that goes on: ``feedback`` with the repeat nudge and the waiting notes added."""
        notes = [self.repeat_note(reply, feedback), *self.notes]
        self.notes.clear()
        return "\n\n".join(part for part in (feedback, *notes) if part)

    def repeat_note(self, reply: str, feedback: str) -> str | None:
        """Call once per turn with the reply and the feedback it got; the escalating nudge, or None.
        A turn repeats when it matches any of the last ``WINDOW`` turns: a 1.5B model was measured
        alternating two turns (a cell, then the same prose) four times over."""
        recent = self.recent
        self.recent = [*recent[-(WINDOW - 1) :], (reply, feedback)]
        if not any(old_feedback == feedback and alike(old_reply, reply) for old_reply, old_feedback in recent):
            self.repeats = 0
            return None
        self.repeats += 1
        steps = prompts.REPEAT_NUDGES
        return steps[min(self.repeats, len(steps)) - 1].replace("TIMES", str(self.repeats + 1))

    def trim(self, reply: str, finish_reason: str, max_tokens: int | None) -> str:
        """The reply cut at a runaway repetition; the note about it (or about a reply cut at the length
        limit) waits in ``notes`` for the next feedback."""
        kept, note = cut_runaway(reply)
        if note is None and finish_reason == "length":
            note = prompts.LENGTH_NOTE.replace("MAX_TOKENS", str(max_tokens or ""))
        if note is not None:
            self.notes.append(note)
        return kept

    def prose_answer(self, reply: str) -> str | None:
        """A reply with neither code nor FINAL: the answer it plainly gives (final.plain_answer), taken once
        the model has run code in this run or after ``PROSE_TURNS`` prose replies in a row; else None."""
        self.prose_turns += 1
        previous, self.last_prose = self.last_prose, reply
        if self.prose_turns >= PROSE_TURNS or self.cells_run:
            return final.plain_answer(reply, previous)
        return None

    def acted(self, cells: int) -> None:
        """A reply with code (``cells`` of it ran) or with a FINAL: the prose streak ends."""
        self.prose_turns = 0
        self.last_prose = None
        self.cells_run += cells
