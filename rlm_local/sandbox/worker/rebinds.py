"""What the REPL tells a cell that rebinds one of its names (worker side only; repl.py uses it).

A cell that rebinds (or deletes) a name the model is given (``context``, ``llm_query``, ``FINAL``, a tool,
a prelude name...) is told so at the top of its output: the name was restored, what the cell had put
there, and that ``context`` holds the real document. A top-level binding of a document name to a literal
is skipped (replaced by ``pass``, line numbers kept) so the rest of the cell runs on the real document.
Small models (Qwen2.5-Coder 1.5B, measured) often start with ``context = "<the metadata preview>"`` and
then search that made-up string, turn after turn. Nothing here runs the model's code: values are
described by their exact built-in type only.
"""

from __future__ import annotations

import ast
import re
import types

_DOCUMENT_NAME = re.compile(r"context(_\d+)?")  # the names a cell must not overwrite with a literal
# Compiled once: module-level re functions go through re's cache, whose evictions free patterns a cell
# compiled (a str subclass can hold a generator), and host code must not free model objects.
_LINE_ENDS = re.compile(r"(?<=\r\n)|(?<=\n)|(?<=\r)(?!\n)")
DELETED = object()  # what a deleted name reads as


def _end_line(stmt: ast.stmt) -> int:
    """A parsed statement's last line (ast.parse always sets it; its type says ``int | None``)."""
    assert stmt.end_lineno is not None
    return stmt.end_lineno


def _describe(value) -> str:
    """A value's type and size for a note, without running the model's code (exact built-in types only)."""
    kind = type(value)
    if kind in (str, list, tuple, dict):
        unit = " characters" if kind is str else " items"
        return f"a {kind.__name__} of {len(value):,}{unit}"
    return "a function" if kind is types.FunctionType else f"a {kind.__name__}"


def _holds(value) -> str:
    return "its function" if callable(value) else f"the real document ({_describe(value)})"


def skip_literal_rebinds(source: str, reserved: dict) -> tuple[str, str]:
    """A top-level ``context = "<a string literal>"`` (or ``context_N``) is replaced by ``pass`` before the cell
    runs, so the rest of the cell works on the real document; returns (source, notes). Only the document
    names: a dict context's other names (``summary``), tools and ``history`` are ordinary initialisers
    (``summary = ""``) that the model means to use, so they are left to the restore-and-note. Measured: told after the fact that ``context`` was restored, Qwen2.5-Coder
    1.5B still re-sent the same cell; skipping the line lets its search code run on the real data.
    Computed values (``context = llm_query(...)``) still run, then are restored (shadow_notes)."""
    try:
        body = ast.parse(source).body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return source, ""  # compile_cell reports it
    # ast numbers lines by \n, \r\n and \r only; str.splitlines() also splits on form feeds and U+2028,
    # which text pasted from a PDF carries, and would put the `pass` on the wrong line.
    lines = _LINE_ENDS.split(source)
    notes = []
    for i, stmt in enumerate(body):
        if not (
            isinstance(stmt, ast.Assign)
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str)
            and stmt.value.value
            and all(
                isinstance(t, ast.Name) and t.id in reserved and _DOCUMENT_NAME.fullmatch(t.id) for t in stmt.targets
            )
        ):
            continue
        if (i and _end_line(body[i - 1]) >= stmt.lineno) or (
            i + 1 < len(body) and body[i + 1].lineno <= _end_line(stmt)
        ):
            continue  # shares a line with another statement (a;b): leave it to the restore
        first, last = stmt.lineno - 1, _end_line(stmt)
        lines[first:last] = ["pass\n"] + ["\n"] * (last - first - 1)  # line numbers stay as written
        for name in dict.fromkeys(t.id for t in stmt.targets if isinstance(t, ast.Name)):  # all are (above)
            notes.append(
                f"[note: line {stmt.lineno} of your cell (`{name} = ...`) was skipped: `{name}` is a "
                f"reserved REPL name and already holds {_holds(reserved[name])}. Never assign "
                f"it; keep your own data under another name.]\n"
            )
    return ("".join(lines), "".join(notes)) if notes else (source, "")


def shadow_notes(reserved: dict, names: dict) -> str:
    """One line per model-visible REPL name the cell rebound or deleted (Repl.settle restores them)."""
    lines = []
    for name, value in reserved.items():
        if name.startswith("_") or name in ("print", "printed"):
            continue
        now = names.get(name, DELETED)
        if now is value:
            continue
        did = "deleted it" if now is DELETED else f"assigned {_describe(now)} to it"
        what = (
            f"it holds the real document ({_describe(value)}); your cell's code after that line "
            f"used your value, not the document"
            if not callable(value)
            else "it is the REPL's function again"
        )
        lines.append(
            f"[note: `{name}` is a reserved REPL name: your cell {did}; `{name}` has been "
            f"restored and {what}. Store your own data under another name.]"
        )
    return "".join(line + "\n" for line in lines)
