"""Benchmark sweeps through the real loop and sandbox, with the oracle (a scripted model that writes correct
code) standing in for the model: every family scores 100%, rows survive a killed run, bad input fails
with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlm_local.bench import niah
from rlm_local.bench.items import BenchError
from rlm_local.bench.methods import Methods
from rlm_local.bench.oracle import oracle_engine
from rlm_local.bench.results import load_rows
from rlm_local.bench.runner import EngineSpec, Sweep, run_sweep

pytestmark = pytest.mark.slow  # waits on limits, servers, browsers or clusters: `pytest -q` leaves it out

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["niah", "oolong", "pairs", "codeqa"])
def test_oracle_scores_100_percent_per_family(name, tmp_path):
    sweep = Sweep(family=name, lengths=[2000, 6000], n=2, methods=["rlm"], engine=EngineSpec("oracle"), out=tmp_path)
    rows = load_rows(run_sweep(sweep))
    assert len(rows) == 4
    for row in rows:
        assert row["score"] == 1.0, row["answer"]
        assert row["stop"] == "final" and row["root_calls"] == 1 and row["error"] is None
        assert row["context_tokens"] > 0 and row["peak_rss_mb"] > 0
    if name in ("oolong", "pairs"):  # the labels were read by sub-calls, one per line
        assert all(r["sub_calls"] == r["meta"]["lines"] for r in rows)


def test_ten_million_character_needle_end_to_end():
    item = niah.make_item(2_500_000, 0, seed=3)
    assert item.length_chars >= 10_000_000
    engine, _ = oracle_engine([item])
    methods = Methods(engine, ["rlm"])
    try:
        answer = methods.run("rlm", item)
    finally:
        methods.close()
    assert answer.stop == "final" and niah.score(item, answer.answer) == 1.0


def test_every_method_writes_a_row_with_costs(tmp_path):
    sweep = Sweep(family="niah", lengths=[2000], n=1, engine=EngineSpec("oracle"), out=tmp_path, window=3000)
    rows = {r["method"]: r for r in load_rows(run_sweep(sweep))}
    assert set(rows) == {"base", "rlm-nosub", "rlm", "summary"}
    assert (
        rows["base"]["root_calls"] == 1 and rows["base"]["extra"]["context_chars_seen"] < rows["base"]["length_chars"]
    )
    assert (
        rows["summary"]["extra"]["chunks"] > 1
        and rows["summary"]["root_calls"] == rows["summary"]["extra"]["chunks"] + 1
    )
    for row in rows.values():
        assert row["prompt_tokens"] > 0 and row["seconds"] >= 0


def test_rlm_rows_keep_their_trajectory_beside_the_rows(tmp_path):
    import gzip
    import json

    sweep = Sweep(
        family="niah",
        lengths=[2000],
        n=1,
        methods=["rlm", "base"],
        engine=EngineSpec("oracle"),
        out=tmp_path,
        window=3000,
    )
    (rlm_row, base_row) = sorted(load_rows(run_sweep(sweep)), key=lambda r: r["method"] != "rlm")
    assert "trajectory" not in rlm_row
    path = tmp_path / "trajectories" / f"{rlm_row['item_id']}.rlm.jsonl.gz"
    events = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "final"
    assert events[-1]["answer"] == rlm_row["answer"]
    assert not (tmp_path / "trajectories" / f"{base_row['item_id']}.base.jsonl.gz").exists()


def test_nosub_refuses_sub_calls(tmp_path):
    sweep = Sweep(
        family="oolong",
        lengths=[2000],
        n=1,
        methods=["rlm-nosub"],
        engine=EngineSpec("oracle"),
        out=tmp_path,
        max_iterations=2,
    )
    row = load_rows(run_sweep(sweep))[0]
    assert row["score"] < 1.0 and row["sub_calls"] == 0


def test_concurrent_items_batch_through_one_scheduler(tmp_path):
    engines = []

    def slow_oracle(items):  # a slow model, so that requests from other items queue up meanwhile
        engine, oracle = oracle_engine(items)
        fn = engine._replies
        engine._replies = lambda req: (time.sleep(0.05), fn(req))[1]
        engines.append(engine)
        return engine

    for k in (1, 4):
        spec = EngineSpec("oracle")
        spec.make = slow_oracle  # type: ignore[method-assign]
        sweep = Sweep(
            family="niah", lengths=[2000], n=4, methods=["rlm"], engine=spec, concurrency=k, out=tmp_path / f"k{k}"
        )
        rows = load_rows(run_sweep(sweep))
        assert [r["score"] for r in rows] == [1.0] * 4 and {r["concurrency"] for r in rows} == {k}
    k1, k4 = engines
    assert max(k1.batches) == 1
    assert max(k4.batches) > 1  # root turns of different items shared an engine call


def _bench(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlm_local.cli", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def test_resume_after_a_killed_run(tmp_path):
    out = tmp_path / "run"
    args = [
        "niah",
        "--backend",
        "oracle",
        "--lengths",
        "2k",
        "--n",
        "40",
        "--methods",
        "rlm",
        "--out",
        str(out),
        "--no-plots",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlm_local.cli", "bench", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    rows_file = out / "rows.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if rows_file.exists() and rows_file.read_text().count("\n") >= 5:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the bench process and its sandbox workers, mid-sweep
    proc.wait()
    before = load_rows(out)
    assert 5 <= len(before) < 40
    again = _bench(*args)
    assert again.returncode == 2 and "--resume" in again.stderr  # never mixes a new sweep into old rows
    done = _bench(*args, "--resume")
    assert done.returncode == 0, done.stderr
    after = load_rows(out)
    assert len(after) == 40 and len({r["item_id"] for r in after}) == 40
    assert after[: len(before)] == before  # finished rows were kept as they were
    assert all(r["score"] == 1.0 for r in after)


def test_report_and_bad_input_fail_with_one_line(tmp_path):
    sweep = Sweep(
        family="niah", lengths=[2000], n=2, methods=["rlm", "base"], engine=EngineSpec("oracle"), out=tmp_path / "ok"
    )
    run_sweep(sweep)
    report = _bench("report", str(tmp_path / "ok"))
    assert report.returncode == 0 and "niah" in report.stdout and "100.0" in report.stdout
    assert (tmp_path / "ok" / "scores.png").stat().st_size > 1000 and (tmp_path / "ok" / "costs.png").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = (tmp_path / "ok" / "rows.jsonl").read_text().splitlines()
    (bad / "rows.jsonl").write_text(lines[0] + "\n{not json\n" + lines[1] + "\n")
    for args, message in (
        (["report", str(bad)], "line 2 is not JSON"),
        (["mmlu"], "unknown family"),
        (["niah", "--methods", "rlm,cot"], "unknown method"),
        (["niah", "--lengths", "20m"], "cannot be generated"),
        (
            ["niah", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "x")],
            "cannot serve",
        ),
    ):
        proc = _bench(*args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1].startswith("rlm-local: error:")


def test_unfinished_last_line_is_dropped_not_fatal(tmp_path):
    sweep = Sweep(family="niah", lengths=[2000], n=2, methods=["rlm"], engine=EngineSpec("oracle"), out=tmp_path)
    path = run_sweep(sweep)
    text = path.read_text()
    path.write_text(text + text.splitlines()[0][:50])  # a write cut short by a kill
    assert len(load_rows(path)) == 2
    with pytest.raises(BenchError, match="already has rows"):
        run_sweep(sweep)


@pytest.mark.model
def test_every_method_on_the_embedded_model(tmp_path):
    """The kit's default path: the embedded model, all four methods, one short item; costs are real."""
    proc = _bench(
        "niah",
        "--lengths",
        "1k",
        "--n",
        "1",
        "--window",
        "1500",
        "--max-iterations",
        "3",
        "--max-timeout",
        "30",
        "--out",
        str(tmp_path),
    )  # at most ~2 minutes on a slow CPU
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["method"]: r for r in load_rows(tmp_path)}
    assert set(rows) == {"base", "rlm-nosub", "rlm", "summary"} and "niah" in proc.stdout
    for row in rows.values():
        assert row["model"] == "gemma-3-270m" and row["peak_rss_mb"] > 100
        if row["stop"] in ("final", "answer"):
            assert row["prompt_tokens"] > 0 and row["root_calls"] >= 1
        elif row["stop"] == "max_timeout":  # a call still running at the budget is not in the row's usage
            assert row["seconds"] >= 29
        else:
            assert row["stop"] == "max_iterations" and row["root_calls"] >= 3
    assert (tmp_path / "scores.png").exists() and (tmp_path / "costs.png").exists()
