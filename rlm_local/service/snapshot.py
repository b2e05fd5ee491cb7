"""A session's REPL variables saved as data and assigned again in a fresh REPL, faithfully, with every
variable that cannot be carried over named with its reason.

Saving runs one cell of ours in the REPL, after the model's last cell of a question and within that
question's time. It reads values by exact built-in type only, so none of the model's code runs (no
``__repr__``, ``__len__``, ``__eq__`` or ``__iter__`` of a class the model wrote): None, bool, int, float
(``inf`` and ``nan`` too), complex, str, bytes, and list, tuple, set, frozenset and dict of them (any such
keys), nested up to ``MAX_DEPTH``. A built-in name the model rebound (``str = context``) is set aside for
that cell and put back. The result is a tagged tree per variable (``["i", "1"]``, ``["t", [...]]``, ...),
read by the parent with ``ast.literal_eval`` and checked. Not saved, each with a reason: functions,
classes, modules, instances of the model's classes (or a container holding one), values deeper than
``MAX_DEPTH`` or with more than ``MAX_ITEMS`` items, and what does not fit in ``MAX_CHARS``.

Restoring assigns Python literals made from the trees (``1e999`` for inf; no name is looked up but
``set``, ``frozenset`` and ``complex``, whose own variables are assigned last), in one cell, or one cell per variable
to find the ones that fail.
"""

from __future__ import annotations

import ast
import math
import re
import secrets
import time
from typing import Any

from ..sandbox import Sandbox

MAX_CHARS = 1_500_000  # the saved trees in all, as text (a FINAL value may carry 2,000,000)
MAX_DEPTH = 40
MAX_ITEMS = 1_000_000
_LISTING = re.compile(r"^([A-Za-z][A-Za-z0-9_]*): (.+)$")
_CONTEXT = re.compile(r"context(_\d+)?")
# The built-in names the saving cell uses: a REPL variable of one of these names is set aside meanwhile.
_BUILTINS_USED = "type repr len range bool str int float complex bytes list tuple set frozenset dict".split()

_ENCODER = """
def ENC(v, depth, count):
    t = type(v)
    if v is None or t is bool or t is str:
        return ["v", v]
    if t is int:
        if v.bit_length() > 13000:
            return "an int too large to save"
        return ["i", repr(v)]
    if t is float:
        return ["f", repr(v)]
    if t is complex:
        return ["c", [repr(v.real), repr(v.imag)]]
    if t is bytes:
        return ["b", v.hex()]
    count[0] = count[0] + 1
    if depth >= MAX_DEPTH or count[0] > MAX_ITEMS:
        return "too deep or too many items"
    if t is dict:
        pairs = []
        for k, x in v.items():
            ek = ENC(k, depth + 1, count)
            ex = ENC(x, depth + 1, count)
            if type(ek) is str:
                return ek
            if type(ex) is str:
                return ex
            pairs.append([ek, ex])
        return ["d", pairs]
    if t is list or t is tuple or t is set or t is frozenset:
        items = []
        for x in v:
            e = ENC(x, depth + 1, count)
            if type(e) is str:
                return e
            items.append(e)
        tag = "l" if t is list else "t" if t is tuple else "s" if t is set else "fs"
        return [tag, items]
    if depth == 0:
        return "not plain data"
    return "holds an object that is not plain data"

def SNAP(values, names):
    count = [0]
    size = [0]
    out = []
    for i in range(len(names)):
        e = ENC(values[i], 0, count)
        if type(e) is str:
            out.append([names[i], None, e])
            continue
        n = len(repr(e))
        if size[0] + n > MAX_CHARS:
            out.append([names[i], None, "over the snapshot cap"])
            continue
        size[0] = size[0] + n
        out.append([names[i], e, None])
    return out
"""


ALL = "*"  # the name a loss is filed under when the variables could not even be listed


def save(sandbox: Sandbox, deadline: float, previous: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The REPL's variables as trees, and the ones not saved with their reasons (all of them, with the
    reason, when the saving cell fails or runs out of time). When the variables cannot be listed (the
    listing calls ``len`` on str and container values, which a class of the model can make endless),
    ``previous`` is kept and the loss is filed under ``ALL``."""
    listing = sandbox.run("SHOW_VARS()", wall_seconds=max(0.05, deadline - time.monotonic()), deadline=deadline)
    if listing.error or listing.timed_out:
        why = "ran out of time" if listing.timed_out else "failed"
        return previous, {ALL: f"listing the variables {why}: none made since the previous save was saved"}
    kinds: dict[str, str] = {}
    for line in listing.stdout.splitlines():
        m = _LISTING.match(line)
        if m and not _CONTEXT.fullmatch(m.group(1)):
            kinds[m.group(1)] = m.group(2)
    plain = [n for n, kind in kinds.items() if kind.split(" (")[0] not in ("module", "class", "function")]
    unsaved = {n: f"a {kinds[n].split(' (')[0]} (not plain data)" for n in kinds if n not in plain}
    if not plain:
        return {}, unsaved
    cell = _saving_cell(plain, set(kinds))
    result = sandbox.run(cell, wall_seconds=max(0.05, deadline - time.monotonic()), deadline=deadline)
    rows = _read_rows(result.final) if not (result.error or result.timed_out) else None
    if rows is None:
        why = "the snapshot ran out of time" if result.timed_out else "the snapshot failed"
        return {}, {**unsaved, **{n: why for n in plain}}
    saved: dict[str, Any] = {}
    for name, tree, reason in rows:
        if reason is None and _valid(tree, 0):
            saved[name] = tree
        elif reason == "not plain data":
            unsaved[name] = f"a {kinds.get(name, 'object').split(' (')[0]} (not plain data)"
        else:
            unsaved[name] = reason or "the snapshot could not be read"
    return saved, unsaved


def restore(sandbox: Sandbox, saved: dict[str, Any], deadline: float | None = None) -> dict[str, str]:
    """Assign the saved variables in ``sandbox``; returns the ones that failed, with their reasons."""
    if not saved:
        return {}
    order = sorted(saved, key=lambda n: n in ("set", "frozenset", "complex"))  # literals use these names
    sources = {n: f"{n} = {literal(saved[n])}" for n in order}
    cell = sandbox.run("\n".join(sources.values()), deadline=deadline)
    if not (cell.error or cell.timed_out):
        return {}
    failed = {}
    for name, source in sources.items():  # one at a time, to name the ones that fail
        cell = sandbox.run(source, deadline=deadline)
        if cell.error or cell.timed_out:
            failed[name] = f"could not be assigned again: {(cell.error or 'out of time').strip().splitlines()[-1]}"
    return failed


def literal(tree: Any) -> str:
    """Python source that evaluates to the value a (checked) tree describes."""
    tag, value = tree
    if tag == "v":
        return repr(value)
    if tag == "i":
        return str(int(value))
    if tag == "f":
        return _float(float(value))
    if tag == "c":
        return f"complex({_float(float(value[0]))}, {_float(float(value[1]))})"
    if tag == "b":
        return repr(bytes.fromhex(value))
    if tag == "d":
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value) + "}"
    items = [literal(v) for v in value]
    if tag == "l":
        return "[" + ", ".join(items) + "]"
    if tag == "t":
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    inner = "{" + ", ".join(items) + "}" if items else ""
    return (f"frozenset({inner})" if tag == "fs" else inner) or "set()"


def _float(x: float) -> str:
    if math.isnan(x):
        return "(1e999 - 1e999)"
    if math.isinf(x):
        return "1e999" if x > 0 else "-1e999"
    return repr(x)


def _saving_cell(names: list[str], taken: set[str]) -> str:
    """The cell that saves ``names``: our helpers under fresh names, rebound built-ins set aside."""
    tag = secrets.token_hex(4)
    enc, snap, held = f"rlm_snapshot_enc_{tag}", f"rlm_snapshot_{tag}", f"rlm_snapshot_held_{tag}"
    code = _ENCODER.replace("ENC", enc).replace("SNAP", snap)
    code = code.replace("MAX_DEPTH", str(MAX_DEPTH)).replace("MAX_ITEMS", str(MAX_ITEMS))
    code = code.replace("MAX_CHARS", str(MAX_CHARS))
    shadowed = [n for n in _BUILTINS_USED if n in taken]
    lines = [f"{held} = {{}}"]
    for n in shadowed:
        lines += [f"{held}[{n!r}] = {n}", f"del {n}"]
    values = ", ".join(f"{held}[{n!r}]" if n in shadowed else n for n in names)
    lines += ["try:", *("    " + line for line in code.splitlines() if line.strip())]
    lines += [f"    FINAL(repr({snap}([{values}], {names!r})))", "finally:"]
    lines += [f"    {n} = {held}[{n!r}]" for n in shadowed]
    lines += [f"    del {held}", f"    {enc} = None", f"    {snap} = None", f"    del {enc}", f"    del {snap}"]
    return "\n".join(lines)


def _read_rows(final: str | None) -> list[tuple[str, Any, str | None]] | None:
    try:
        rows = ast.literal_eval(final) if isinstance(final, str) else None
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(rows, list) or not all(
        isinstance(r, list) and len(r) == 3 and isinstance(r[0], str) and isinstance(r[2], (str, type(None)))
        for r in rows
    ):
        return None
    return [(r[0], r[1], r[2]) for r in rows]


_SCALARS = {"v": (type(None), bool, str), "i": (str,), "f": (str,), "b": (str,)}


def _valid(tree: Any, depth: int) -> bool:
    """A tree the saving cell can have made (the cell ran in the untrusted REPL: check before use)."""
    if depth > MAX_DEPTH + 1 or not isinstance(tree, list) or len(tree) != 2 or not isinstance(tree[0], str):
        return False
    tag, value = tree
    try:
        if tag in _SCALARS:
            if not isinstance(value, _SCALARS[tag]):
                return False
            if tag == "v":
                return True
            assert isinstance(value, str)  # the other scalar tags hold text
            if tag == "i":
                int(value)
            elif tag == "f":
                float(value)
            elif tag == "b":
                bytes.fromhex(value)
            return True
        if tag == "c":
            return isinstance(value, list) and len(value) == 2 and all(_num(x) for x in value)
        if tag == "d":
            return isinstance(value, list) and all(
                isinstance(p, list) and len(p) == 2 and _valid(p[0], depth + 1) and _valid(p[1], depth + 1)
                for p in value
            )
        return tag in ("l", "t", "s", "fs") and isinstance(value, list) and all(_valid(v, depth + 1) for v in value)
    except (ValueError, TypeError):
        return False


def _num(x: Any) -> bool:
    try:
        float(x)
        return isinstance(x, str)
    except (ValueError, TypeError):
        return False
