"""`rlm-local bench report DIR --failures`: failed rows classified from their trajectories (issue 15)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlm_local.bench.failures import classify, failure_table, markdown, max_identical_cells
from rlm_local.errors import BenchError

Q = "What is the special magic number for quiet beacon? Answer as 'Answer: <number>'."


def row(family="niah", method="rlm", answer="", stop="final", score=0.0, sub_calls=0, **extra):
    return {
        "family": family,
        "item_id": f"{family}-1000-0-s0",
        "method": method,
        "model": "m",
        "length_tokens": 1000,
        "score": score,
        "seconds": 1.0,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "answer": answer,
        "stop": stop,
        "sub_calls": sub_calls,
        "question": Q,
        "error": None,
        **extra,
    }


def cell(code, stdout="", depth=0, error=None):
    return {"event": "cell", "code": code, "stdout": stdout, "depth": depth, "error": error}


def test_each_class_from_its_trajectory():
    search = cell("print(re.findall('Quiet beacon: (\\\\d+)', context))", "[]")
    assert classify(row(stop="engine_error", error="boom"), []) == "engine error"
    assert classify(row(family="oolong", answer="human"), [cell("print(1)", "1")]) == "no sub-call where needed"
    assert classify(row(stop="max_iterations"), [search] * 3) == "repeated cell"
    assert (
        classify(row(stop="max_iterations"), [search, cell("print(context.find('x'))", "-1")])
        == "search matched nothing"
    )
    assert classify(row(answer="12345"), [search]) == "invented answer"
    hits = cell("search('beacon')", "L7> quiet beacon is: 9679254.\nL9> golden beacon is: 1234567.")
    assert classify(row(answer="9679254"), [hits]) == "wrong candidate taken"
    assert classify(row(stop="max_iterations"), [hits]) == "no FINAL"
    assert classify(row(stop="max_timeout"), [hits]) == "budget"
    assert classify(row(method="base", answer="42"), None) == "wrong answer"
    assert classify(row(method="base", stop="max_timeout"), None) == "budget"
    assert classify(row(method="summary"), None) == "no answer"


def test_identical_cells_in_a_row_are_counted_per_depth():
    a, b = cell("print(1)"), cell("print(2)")
    assert max_identical_cells([a, b, a]) == 1
    assert max_identical_cells([a, cell("print(1)", depth=1), a, a]) == 3  # a child's cell does not break the run
    assert max_identical_cells([a, cell("print(1)", depth=1), cell("print(1)", depth=1), b]) == 2
    assert max_identical_cells([{"event": "root_turn"}, a, a, a]) == 3


def write_sweep(folder: Path, rows_and_events):
    (folder / "trajectories").mkdir(parents=True)
    with open(folder / "rows.jsonl", "w") as fh:
        for r, events in rows_and_events:
            fh.write(json.dumps(r) + "\n")
            if events is not None:
                data = "".join(json.dumps(e) + "\n" for e in events).encode()
                (folder / "trajectories" / f"{r['item_id']}.{r['method']}.jsonl.gz").write_bytes(gzip.compress(data))


def test_a_table_per_method_from_saved_rows_and_the_cli(tmp_path):
    search = cell("print(re.findall('x', context))", "[]")
    write_sweep(
        tmp_path / "niah",
        [
            (row(stop="max_iterations"), [search] * 4),
            (row(method="base", answer="7"), None),
            (row(answer="1", score=1.0, item_id="niah-1000-1-s0"), [cell("print(1)", "1")]),
        ],
    )
    tables = failure_table(tmp_path)
    assert tables["rlm"]["rows"] == 2 and tables["rlm"]["failed"] == 1 and tables["rlm"]["repeat"] == 4
    assert tables["rlm"]["classes"]["repeated cell"] == 1 and tables["base"]["classes"]["wrong answer"] == 1
    assert "| repeated cell | 1 | 100% |" in markdown(tables)
    out = subprocess.run(
        [sys.executable, "-m", "rlm_local.cli", "bench", "report", str(tmp_path), "--failures", "--markdown"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "**rlm**: 1 of 2 rows failed; most identical cells in a row: 4" in out.stdout


def test_no_rows_or_a_damaged_trajectory_is_one_line(tmp_path):
    with pytest.raises(BenchError, match="no rows.jsonl"):
        failure_table(tmp_path)
    write_sweep(tmp_path / "niah", [(row(), [cell("x")])])
    (tmp_path / "niah" / "trajectories" / "niah-1000-0-s0.rlm.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(BenchError, match="cannot read trajectory"):
        failure_table(tmp_path)


def test_bad_lever_flags_are_one_line():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlm_local.cli",
            "bench",
            "niah",
            "--backend",
            "oracle",
            "--lever",
            "toolkit=maybe",
            "--out",
            "/nonexistent",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--lever 'toolkit=maybe'" in out.stderr and len(out.stderr.strip().splitlines()) == 1
