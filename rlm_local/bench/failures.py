"""``rlm-local bench report DIR --failures``: every failed row (score below 1) classified from its trajectory,
one table per method, to choose what to fix in the loop.

One class per row, the first that applies, in this order (RLM rows; base and summary rows have no
trajectory and get only the classes that need none):

- ``engine error``: the row ended with an engine or harness error;
- ``no sub-call where needed``: the family needs a judgement per record (``NEEDS_SUBCALLS``) and the run
  made no sub-call;
- ``repeated cell``: the same cell ran three or more times in a row;
- ``search matched nothing``: every search the code ran printed nothing found (no answer followed);
- ``invented answer``: the answer appears in nothing the run observed (question, metadata, cell output);
- ``wrong candidate taken``: the answer is one the run observed, but not the right one;
- ``no FINAL``: no answer at max_iterations; ``budget``: no answer at another budget (time, tokens, sub-calls);
- ``wrong answer``: (base, summary) a wrong answer; ``no answer``: (base, summary) an empty one.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BenchError
from ..loop.final import grounded
from .items import family
from .results import ROWS_FILE, TRAJECTORIES_DIR, load_rows

CLASSES = (
    "engine error",
    "no sub-call where needed",
    "repeated cell",
    "search matched nothing",
    "invented answer",
    "wrong candidate taken",
    "no FINAL",
    "budget",
    "wrong answer",
    "no answer",
)
REPEAT_LIMIT = 3  # identical cells in a row that make "repeated cell" (issue 15's target: at most two)
_SEARCHING = re.compile(r"\bre\.|\.find\(|\bsearch\(|\.count\(|\bin\s+\w+|startswith|\.index\(")
_NOTHING = re.compile(
    r"^\s*(?:\[\]|\(\)|\{\}|None|0|-1|False|''|no line contains .*|\(no output\)|Answer:\s*(?:None|0|\[\]))?\s*$",
    re.I | re.S,
)


def rows_with_trajectories(directory: Path) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]] | None]]:
    """Each row of ``directory`` (or of its sweeps one level below) with its trajectory's events, if saved."""
    files = [directory / ROWS_FILE] if (directory / ROWS_FILE).exists() else sorted(directory.glob(f"*/{ROWS_FILE}"))
    if not files:
        raise BenchError(f"no {ROWS_FILE} in {directory} or its subdirectories")
    for path in files:
        for row in load_rows(path):
            traj = path.parent / TRAJECTORIES_DIR / f"{row['item_id']}.{row['method']}.jsonl.gz"
            yield row, (_events(traj) if traj.exists() else None)


def _events(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines() if line]
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read trajectory {path}: {exc}") from None


def max_identical_cells(events: list[dict[str, Any]]) -> int:
    """The longest run of identical cells in a row (per depth), the metric the resample lever bounds."""
    best = 0
    last: dict[int, str] = {}
    run: dict[int, int] = {}
    for e in events:
        if e.get("event") != "cell":
            continue
        depth, code = e.get("depth", 0), " ".join(str(e.get("code", "")).split())
        run[depth] = run.get(depth, 0) + 1 if last.get(depth) == code else 1
        last[depth] = code
        best = max(best, run[depth])
    return best


def classify(row: dict[str, Any], events: list[dict[str, Any]] | None) -> str:
    """The failure class of one failed row (see the module docstring for the order)."""
    answer = str(row.get("answer") or "").strip()
    if row.get("stop") in ("engine_error", "error") or (row.get("error") and not answer):
        return "engine error"
    if events is None:  # base, summary: one or a few plain calls
        return "wrong answer" if answer else ("budget" if row.get("stop") == "max_timeout" else "no answer")
    if getattr(family(row["family"]), "NEEDS_SUBCALLS", False) and not row.get("sub_calls"):
        return "no sub-call where needed"
    if max_identical_cells(events) >= REPEAT_LIMIT:
        return "repeated cell"
    cells = [e for e in events if e.get("event") == "cell" and not e.get("depth")]
    searches = [c for c in cells if _SEARCHING.search(str(c.get("code", ""))) and not c.get("error")]
    if searches and all(_NOTHING.match(str(c.get("stdout") or "")) for c in searches) and not answer:
        return "search matched nothing"
    if answer:
        seen = "\n".join([str(row.get("question", ""))] + [str(c.get("stdout") or "") for c in cells])
        return "wrong candidate taken" if grounded(answer, seen) else "invented answer"
    return "no FINAL" if row.get("stop") == "max_iterations" else "budget"


def failure_table(directory: Path) -> dict[str, dict[str, Any]]:
    """Per method: rows, failed rows, the count of each class, and the longest run of identical cells."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"rows": 0, "failed": 0, "classes": Counter(), "repeat": 0})
    for row, events in rows_with_trajectories(directory):
        t = out[row["method"]]
        t["rows"] += 1
        if events is not None:
            t["repeat"] = max(t["repeat"], max_identical_cells(events))
        if float(row["score"]) < 1.0:
            t["failed"] += 1
            t["classes"][classify(row, events)] += 1
    return dict(out)


def markdown(tables: dict[str, dict[str, Any]]) -> str:
    """The failure tables as Markdown, one per method."""
    parts = []
    for method, t in tables.items():
        lines = [
            f"**{method}**: {t['failed']} of {t['rows']} rows failed; most identical cells in a row: {t['repeat']}",
            "",
            "| class | rows | share of failures |",
            "|---|---|---|",
        ]
        for name in CLASSES:
            if t["classes"][name]:
                lines.append(f"| {name} | {t['classes'][name]} | {100 * t['classes'][name] / t['failed']:.0f}% |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
