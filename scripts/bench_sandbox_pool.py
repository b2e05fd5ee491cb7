"""Benchmark the warm sandbox pool: first-cell latency and runs per second, by pool size.

    python scripts/bench_sandbox_pool.py [--sizes 0,1,2,4] [--runs 20] [--out scripts/results/bench_sandbox_pool.json]

Two measures per pool size (0 = no pool, a worker started per session):
- first cell: a new ``Sandbox`` until its first trivial cell returns (median of ``--runs``), the pool
  warm before each session (as for a service between requests);
- runs per second: ``RLM.completion`` on short scripted tasks (scripted engine: one cell, then FINAL),
  back to back, so the pool refills in the background while runs go on; the first-cell latency inside
  those runs (from completion() to the first cell's result) is reported too.
Sizes are measured interleaved, in rounds, so background load falls on all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlm_local import RLM  # noqa: E402
from rlm_local.engines.scripted import ScriptedEngine  # noqa: E402
from rlm_local.runlog.events import CellRan  # noqa: E402
from rlm_local.sandbox import Sandbox, SandboxPool  # noqa: E402

CONTEXT = "On 2023-07-15 the team met; revenue rose 4 percent.\n" * 200


def reply(request) -> str:
    """One cell, then FINAL: a short task whose time is mostly sandbox start-up and round trips."""
    first = sum(m["role"] == "assistant" for m in request.messages) == 0
    code = "print(len(context.splitlines()))" if first else "FINAL('done')"
    return f"Let me look.\n```repl\n{code}\n```\n"


def first_cell(pool: SandboxPool | None) -> float:
    if pool is not None:
        pool.wait_ready(timeout=120)
    t0 = time.perf_counter()
    with Sandbox(context=CONTEXT, pool=pool) as sb:
        r = sb.run("x = 1")
        took = time.perf_counter() - t0
    if r.error:
        raise RuntimeError(r.error)
    return took


def runs(size: int, n: int) -> tuple[float, float]:
    """(runs per second, median first-cell latency in a run) over ``n`` back-to-back completions."""
    first: list[float] = []
    started = [0.0]

    def on_event(event) -> None:
        if isinstance(event, CellRan) and started[0]:
            first.append(time.perf_counter() - started[0])
            started[0] = 0.0

    rlm = RLM(backend="scripted", engine=ScriptedEngine(reply), sandbox_pool=size, on_event=on_event)
    try:
        if rlm.settings.sandbox_pool is not None:
            rlm.settings.sandbox_pool.wait_ready(timeout=120)
        t0 = time.perf_counter()
        for _ in range(n):
            started[0] = time.perf_counter()
            result = rlm.completion(CONTEXT, "How many lines?")
            if result.response != "done":
                raise RuntimeError(f"unexpected answer {result.response!r}")
        return n / (time.perf_counter() - t0), statistics.median(first)
    finally:
        rlm.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0,1,2,4")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="scripts/results/bench_sandbox_pool.json")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    latency: dict[int, list[float]] = {s: [] for s in sizes}
    rate: dict[int, list[float]] = {s: [] for s in sizes}
    in_run: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            pool = SandboxPool(size) if size else None
            try:
                latency[size] += [first_cell(pool) for _ in range(args.runs)]
            finally:
                if pool is not None:
                    pool.close()
            per_second, first = runs(size, args.runs)
            rate[size].append(per_second)
            in_run[size].append(first)
    rows = [
        {
            "pool_size": s,
            "first_cell_ms": round(statistics.median(latency[s]) * 1000, 1),
            "runs_per_second": round(statistics.median(rate[s]), 2),
            "first_cell_in_run_ms": round(statistics.median(in_run[s]) * 1000, 1),
        }
        for s in sizes
    ]
    print(f"{'pool size':>9}  {'first cell (ms)':>15}  {'runs/s':>7}  {'first cell in a run (ms)':>24}")
    for r in rows:
        print(
            f"{r['pool_size']:>9}  {r['first_cell_ms']:>15.1f}  {r['runs_per_second']:>7.2f}  "
            f"{r['first_cell_in_run_ms']:>24.1f}"
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "rows": rows,
                "runs": args.runs,
                "rounds": args.rounds,
                "load_average": os.getloadavg(),
                "python": sys.version.split()[0],
                "cpus": os.cpu_count(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            f,
            indent=2,
        )
    print(f"wrote {args.out} (load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
