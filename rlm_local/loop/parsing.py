"""Reading a root model's reply: which code to run and whether it already gave a final answer.

Models fence code as ```repl (the paper's convention) or ```python; small models often leave the last
fence open (or a stop string cut it), so an unclosed final fence still counts. FINAL(...) and
FINAL_VAR(...) are accepted on a line of their own in the reply text as well as in code.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

# Any fence tag is matched (so a ```json block cannot swallow the next ```repl); the tag decides what runs.
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[ \t]*\n(.*?)(?:\n?```|\Z)", re.DOTALL)
_CODE_TAGS = {"repl", "python", "python3", "py"}
_FINAL_VAR = re.compile(r"^[ \t]*FINAL_VAR\((.*?)\)[ \t]*$", re.MULTILINE)
_FINAL_LINE = re.compile(r"^[ \t]*FINAL\(([^\n]*)\)[ \t]*$", re.MULTILINE)
# An answer spanning lines: FINAL( whose bracket is not closed on its own line, up to the next line ending in ).
_FINAL_BLOCK = re.compile(r"^[ \t]*FINAL\(([^\n]*\n.*?)\)[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass
class ParsedReply:
    code_blocks: list[str] = field(default_factory=list)
    final_answer: str | None = None  # FINAL(...) written in the text, outside code
    final_var: str | None = None  # FINAL_VAR(name) written in the text, outside code
    final_is_name: bool = False  # FINAL(x) with a bare identifier: probably a REPL variable

    @property
    def has_final(self) -> bool:
        return self.final_answer is not None or self.final_var is not None


def parse_reply(text: str) -> ParsedReply:
    blocks: list[str] = []
    prose_parts: list[str] = []
    last = 0
    for match in _FENCE.finditer(text):
        prose_parts.append(text[last : match.start()])
        last = match.end()
        lang, body = match.group(1).lower(), match.group(2).strip("\n")
        # A bare ``` fence may be an output sample rather than code: run it only if it is valid Python.
        if body.strip() and (lang in _CODE_TAGS or (not lang and _parses(body))):
            blocks.append(body)
    prose_parts.append(text[last:])
    prose = "".join(prose_parts)
    parsed = ParsedReply(code_blocks=blocks)
    if m := _FINAL_VAR.search(prose):
        parsed.final_var = _strip_quotes(m.group(1).strip())
    elif m := _FINAL_LINE.search(prose) or _FINAL_BLOCK.search(prose):
        parsed.final_answer = _literal_or_text(m.group(1).strip())
        parsed.final_is_name = m.group(1).strip().isidentifier()
    return parsed


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def _strip_quotes(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _literal_or_text(value: str) -> str:
    """FINAL("42") means the string 42, FINAL(42) means 42; anything else is taken as written."""
    try:
        return str(ast.literal_eval(value))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return value
