"""The one place a final answer is worked out, for every path: a normal turn, the closing request after a
budget stop, a child run; written in the reply text or done by the code.

Ways a model says it is done, in the order they are trusted:
1. code ran ``FINAL(value)`` or ``FINAL_VAR("name")``, or set the reference library's answer dict
   (``answer["content"] = ...; answer["ready"] = True``, or ``answer = {...}`` rebound): the REPL
   predefines ``answer = {"content": "", "ready": False}`` and reports ``str(answer["content"])`` as
   ``cell.final`` once ``ready`` is true, as the reference's prompt describes;
2. the reply text says ``FINAL_VAR(name)``: the variable's value, read from the REPL directly;
3. the reply text says ``FINAL(x)``: the value of variable ``x`` when ``x`` is a bare name that exists
   (small models write ``FINAL(result)`` meaning the variable), else ``x`` as written.
A text ``FINAL(...)`` next to code is ignored: it was written before the code's output was seen. A text
``FINAL_VAR(name)`` after code is trusted: it names what that code just computed.
4. a reply in plain prose that is plainly an answer (``plain_answer``): the loop asks once for FINAL
   first, unless the model has already looked at the context (run.py). Small instruction models answer
   in the question's format ("The access code is 4471.") and never call FINAL.
Variables are read with ``Sandbox.read_variable``, never by running a generated code cell.

Whether an answer is supported (the ``ground`` and ``recover`` levers, levers.py): an answer is *grounded*
when the model computed it (it is not written out in the reply or code that gave it) or when what it wrote
appears in what the run observed (the question, the context's metadata, every cell's output).
``printed_answers`` finds the candidates a run's cells printed ("Answer: X"), for a run that ends on a
budget without a final answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..sandbox import CellResult
from .parsing import ParsedReply

ANSWER_VAR = "answer"  # the reference library's answer-dict protocol (the REPL reports it: rule 1)

# read(name) -> the REPL variable's CellResult (value, or error when missing)
Reader = Callable[[str], CellResult]


def as_text(value: Any) -> str:
    """A REPL value as answer text: strings as they are, containers as JSON, anything else as str()."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def read_text(read: Reader, name: str) -> str | None:
    """The value of REPL variable ``name`` as text, or None when there is no such variable."""
    cell = read(name)
    return None if cell.error is not None else as_text(cell.value)


def from_text(parsed: ParsedReply, read: Reader | None, closing: bool = False) -> str | None:
    """A final answer written in the reply text (rules 2 and 3 above); ``read`` None means no REPL.
    ``closing``: the reply to the closing request after a budget stop, where a FINAL next to code is taken
    (there is no later turn to give it in)."""
    if parsed.final_var is not None:
        return read_text(read, parsed.final_var) if read is not None else None
    if parsed.final_answer is None or (parsed.code_blocks and not closing):
        return None
    if parsed.final_is_name and read is not None:
        value = read_text(read, parsed.final_answer)
        if value is not None:
            return value
    return parsed.final_answer


def after_cells(parsed: ParsedReply, cells: list[CellResult], read: Reader) -> str | None:
    """The final answer of a turn whose code ran (``cells``, in order), or None to go on."""
    for cell in cells:
        if cell.final is not None:
            return cell.final
    return from_text(parsed, read)


# A line that gives the answer outright: "Answer: X", "**Final answer:** X", "The answer is X".
_MARKED = re.compile(
    r"^[\s>*_#-]*(?:the\s+)?(?:final\s+)?answer\s*(?:is\s*:?|:)[\s*_]*(?P<value>\S.*?)\s*$",
    re.IGNORECASE | re.MULTILINE,
)
# "Answer:" alone on a line, the answer on the next one.
_MARKED_ABOVE = re.compile(
    r"^[\s>*_#-]*(?:final\s+)?answer\s*:?[\s*_]*\n\s*(?P<value>\S.*?)\s*$", re.IGNORECASE | re.MULTILINE
)
_MARKER_ONLY = re.compile(r"^[\s>*_#-]*(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*:?[\s*_]*$", re.IGNORECASE)
# Signs that the reply is a plan, a question or a non-answer, not an answer: then nothing is taken.
_NOT_AN_ANSWER = re.compile(
    r"\?\s*$|```|\b(?:let\s+me|let's|i\s+will|i'll|i\s+need|we\s+need|need\s+to|first,|next,|then\s+i|"
    r"search|look\s+(?:at|for|into)|inspect|check(?:ing)?\s|not\s+sure|unclear|cannot|can't|could\s+not|"
    r"couldn't|unable|not\s+(?:found|given|mentioned|provided|in\s+the)|no\s+information|don't\s+know|unknown|"
    r"(?:in|from)\s+the\s+(?:context|document|text|data|output|repl|variable)|"
    # pointers and hedges: "the answer is printed above", "probably hidden in the log", "see the output"
    r"above|below|printed|shown|see\s+the|output|probably|likely|maybe|perhaps|somewhere|should\s+be|"
    r"the\s+value\s+of|hidden|deeper)\b",
    re.IGNORECASE | re.MULTILINE,
)
# Replies that say nothing: a model repeating one of these is stuck, not insisting on an answer.
_ACKNOWLEDGEMENT = re.compile(
    r"^(?:ok(?:ay)?|sure|yes|no|alright|understood|got\s+it|thanks?(?:\s+you)?|"
    r"sorry|i\s+(?:can|could|will)\b|certainly|of\s+course|great|done)\b",
    re.IGNORECASE,
)
PLAIN_MAX_VALUE_CHARS = 200  # the X of "Answer: X"; longer is a sentence about the answer
PLAIN_MAX_CHARS = 400  # an answer given in prose is short; longer prose is an explanation or a plan
PLAIN_MAX_LINES = 4


def plain_answer(reply: str, previous: str | None = None) -> str | None:
    """The answer in a reply with no code and no FINAL, when it is plainly one; else None.

    Plainly an answer: short (``PLAIN_MAX_CHARS``, ``PLAIN_MAX_LINES``), no code fence, no sign of a plan,
    a question or a non-answer ("let me search", "not found", a trailing "?"), and either a line that
    says so ("Answer: X", "The answer is X": X is taken) or the same text as ``previous``, the model's
    last prose reply (it insisted after being asked for FINAL: the whole text is taken)."""
    text = reply.strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if not text or len(text) > PLAIN_MAX_CHARS or len(lines) > PLAIN_MAX_LINES or _NOT_AN_ANSWER.search(text):
        return None
    if m := _MARKED.search(text) or _MARKED_ABOVE.search(text):
        value = m.group("value").strip().strip("*_`\"' ").rstrip(".").strip()
        return value if value and len(value) <= PLAIN_MAX_VALUE_CHARS else None
    if _MARKER_ONLY.match(text):
        return None  # "Answer:" with nothing after it
    if (
        previous is not None
        and " ".join(previous.split()) == " ".join(text.split())
        and not _ACKNOWLEDGEMENT.match(text)
    ):
        return text
    return None


_WORD = re.compile(r"[0-9a-z]+")
# "Answer: X", "answer = X", "Final answer: X" printed on a line of its own by the model's code.
_PRINTED = re.compile(r"^[ \t>*#-]*(?:final[ _]+)?answer[ \t]*[:=][ \t]*(?P<value>\S.*?)[ \t.]*$", re.I | re.M)


def _normal(text: str) -> str:
    return " ".join(text.lower().split()).strip(" \t\"'`.")


def written_out(answer: str, written: str) -> bool:
    """Did the model write ``answer`` out itself (in ``written``, its reply or code), rather than compute it?"""
    a = _normal(answer)
    return bool(a) and a in _normal(written)


def grounded(answer: str, observed: str) -> bool:
    """``answer`` appears in ``observed`` (whole, or every word and number of it, case-insensitive)."""
    a = _normal(answer)
    if not a:
        return True
    seen = _normal(observed)
    if re.search(rf"(?<![0-9a-z]){re.escape(a)}(?![0-9a-z])", seen):  # whole, not inside a longer number
        return True
    words = [w for w in _WORD.findall(a) if len(w) >= 2 or w.isdigit()]
    return bool(words) and set(words) <= set(_WORD.findall(seen))


def printed_answers(stdout: str) -> list[str]:
    """The answers a cell's output states ("Answer: X" lines), in order."""
    return [m.group("value").strip().strip("\"'`") for m in _PRINTED.finditer(stdout) if m.group("value").strip()]


@dataclass
class Evidence:
    """What one (sub-)run has observed (question, metadata, every cell's output) and the answers it has seen
    stated without taking them (printed "Answer: X" lines, a FINAL written next to code, an answer that was
    questioned): the ``ground`` and ``recover`` levers read it."""

    observed: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    questioned: bool = False  # an ungrounded answer was sent back once already
    outputs_seen: int = 0  # cell outputs the model has read (shown in a turn before the current one)

    def saw(self, text: str, printed: bool = True) -> None:
        """An observation; ``printed``: cell output whose "Answer: X" lines are candidates."""
        self.observed.append(text)
        if printed:
            self.candidates.extend(printed_answers(text))

    def claim(self, answer: str | None) -> None:
        if answer and answer.strip():
            self.candidates.append(answer.strip())

    def supported(self, answer: str, written: str) -> bool:
        """Computed by code (not written out in ``written``), or grounded in what the run observed."""
        return not written_out(answer, written) or grounded(answer, "\n".join(self.observed))

    def closer_line(self, answer: str) -> str | None:
        """For a numeric answer read off a line the run printed: another printed line holding a different number
        of the same length that shares more words with the question (``observed[0]``) than every line holding
        the answer does; None when there is no such line. Near-identical entries (a code for the north gate
        and one for the north tower) are where a small model copies the wrong one."""
        digits = re.sub(r"[\s,._-]", "", answer)
        if not digits.isdigit() or len(digits) < 3 or not self.observed:
            return None
        question = {w for w in _WORD.findall(self.observed[0].lower()) if len(w) >= 3}
        number = re.compile(rf"(?<!\d)\d{{{len(digits)}}}(?!\d)")

        def overlap(line: str) -> int:
            return len(question & set(_WORD.findall(line.lower())))

        lines = [line for text in self.observed[1:] for line in text.splitlines() if number.search(line)]
        own = [overlap(line) for line in lines if digits in number.findall(line)]
        if not own:
            return None
        others = [line for line in lines if digits not in number.findall(line) and overlap(line) > max(own)]
        return max(others, key=overlap).strip() if others else None

    def best(self) -> tuple[str, bool] | None:
        """The latest grounded candidate, else the latest candidate; with whether it is grounded."""
        seen = "\n".join(self.observed)
        for answer in reversed(self.candidates):
            if grounded(answer, seen):
                return answer, True
        return (self.candidates[-1], False) if self.candidates else None


def prose(reply: str) -> str:
    """A reply without its fenced code blocks: the best partial answer when no final one was given."""
    return re.sub(r"```.*?(?:```|\Z)", "", reply, flags=re.DOTALL).strip()
