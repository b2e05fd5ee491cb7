"""Saved rows: reading them back (strictly), and the summary table computed from them.

A results directory holds ``rows.jsonl`` (one JSON object per finished item and method) and
``sweep.json`` (the command's settings and the machine). A final line without its newline is a write cut
short by a kill: it is dropped (its item runs again on resume). Any other unreadable line is a corrupt
file: :class:`BenchError` names the line.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .items import METHODS, BenchError

ROWS_FILE = "rows.jsonl"
TRAJECTORIES_DIR = "trajectories"  # ITEM.METHOD.jsonl.gz: the events of each RLM row
REQUIRED = (
    "family",
    "item_id",
    "method",
    "model",
    "length_tokens",
    "score",
    "seconds",
    "prompt_tokens",
    "completion_tokens",
)
logger = logging.getLogger("rlm_local.bench")


def row_key(item_id: str, method: str) -> tuple[str, str]:
    """What identifies a finished row within one results directory (one model per directory)."""
    return (item_id, method)


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every complete row of a rows file (or of ``DIR/rows.jsonl``); BenchError for a missing or corrupt file."""
    path = Path(path)
    if path.is_dir():
        path = path / ROWS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read results file {path}: {exc}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        logger.warning("%s: dropping an unfinished last line (a sweep killed while writing)", path)
        lines.pop()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchError(f"corrupt results file {path}: line {number} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or any(k not in row for k in REQUIRED):
            raise BenchError(f"corrupt results file {path}: line {number} is not a benchmark row")
        rows.append(row)
    return rows


def load_tree(directory: str | Path) -> list[dict[str, Any]]:
    """The rows of ``directory``, or, when it has no rows file of its own, of every ``*/rows.jsonl`` one level
    below it (one sweep per family, reported together)."""
    directory = Path(directory)
    if (directory / ROWS_FILE).exists() or not directory.is_dir():
        return load_rows(directory)
    files = sorted(directory.glob(f"*/{ROWS_FILE}"))
    if not files:
        raise BenchError(f"no {ROWS_FILE} in {directory} or its subdirectories")
    return [row for f in files for row in load_rows(f)]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]; 0 for no values."""
    if not values:
        return 0.0
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


@dataclass
class Cell:
    """Aggregates over the rows of one (family, model, method, length)."""

    family: str
    model: str
    method: str
    length_tokens: int
    n: int
    score: float  # mean
    score_std: float
    seconds_p50: float
    seconds_p90: float
    tokens_p50: float  # prompt + completion
    tokens_p90: float
    sub_calls_mean: float
    errors: int


def summarize(rows: list[dict[str, Any]]) -> list[Cell]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["family"], r["model"], r["method"], r["length_tokens"])].append(r)
    cells = []

    def order(key: tuple) -> tuple:
        fam, model, method, length = key
        return (fam, model, METHODS.index(method) if method in METHODS else len(METHODS), method, length)

    for (fam, model, method, length), rs in sorted(groups.items(), key=lambda kv: order(kv[0])):
        scores = [float(r["score"]) for r in rs]
        secs = [float(r["seconds"]) for r in rs]
        toks = [float(r["prompt_tokens"] + r["completion_tokens"]) for r in rs]
        cells.append(
            Cell(
                fam,
                model,
                method,
                length,
                len(rs),
                statistics.fmean(scores),
                statistics.pstdev(scores) if len(scores) > 1 else 0.0,
                percentile(secs, 50),
                percentile(secs, 90),
                percentile(toks, 50),
                percentile(toks, 90),
                statistics.fmean(float(r.get("sub_calls", 0)) for r in rs),
                sum(1 for r in rs if r.get("stop") in ("error", "engine_error")),
            )
        )
    return cells


COLUMNS = (
    "family",
    "method",
    "length",
    "n",
    "score",
    "s p50",
    "s p90",
    "tokens p50",
    "tokens p90",
    "sub-calls",
    "errors",
)


def table_rows(cells: list[Cell]) -> list[list[str]]:
    """The summary table as strings (the CLI prints it with rich, RESULTS.md as markdown)."""
    return [
        [
            c.family,
            c.method,
            f"{c.length_tokens:,}",
            str(c.n),
            f"{100 * c.score:.1f} ± {100 * c.score_std:.1f}",
            f"{c.seconds_p50:.1f}",
            f"{c.seconds_p90:.1f}",
            f"{c.tokens_p50:,.0f}",
            f"{c.tokens_p90:,.0f}",
            f"{c.sub_calls_mean:.1f}",
            str(c.errors),
        ]
        for c in cells
    ]


def markdown_table(cells: list[Cell]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(cells)]
    return "\n".join(lines)
