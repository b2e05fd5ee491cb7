"""Sweep throughput: the same items run K=8 at a time vs one at a time, through one shared scheduler.

Each pass makes a fresh engine (no KV prefix or memo carried from the other pass; the scheduler's memo is
off in sweeps anyway), runs the same N items with one method, and measures wall time. With K > 1 the
root turns and sub-calls of different items reach the engine's one scheduler together and run as one
batch. Prints a table and writes JSON with every row, the batch sizes the engine saw and the ratio.

Usage: PYTHONPATH=. .venv/bin/python scripts/bench_sweep_concurrency.py [--family niah] [--length 1k] [--n 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rlm_local.bench.items import family, parse_length
from rlm_local.bench.methods import Methods
from rlm_local.bench.runner import EngineSpec, run_items
from rlm_local.engines import DEFAULT_BACKEND


def one_pass(spec: EngineSpec, fam: str, length: int, n: int, method: str, k: int, args: argparse.Namespace) -> dict:
    items = family(fam).generate(length, n, seed=args.seed)
    engine = replace(spec, min_slots=k).make(items)  # as `rlm-local bench --concurrency k` makes it
    methods = Methods(engine, [method], max_iterations=args.max_iterations, max_timeout=args.max_timeout)
    calls: list[int] = []
    generate = engine.generate

    def counting(requests, *a, **kw):  # the batch sizes the engine was given (the point of K > 1)
        calls.append(len(requests))
        return generate(requests, *a, **kw)

    engine.generate = counting  # type: ignore[method-assign]
    rows: list[dict] = []
    started = time.perf_counter()
    try:
        run_items(methods, items, [method], k, lambda row, _trajectory=None: rows.append(row), backend=spec.backend)
    finally:
        wall = time.perf_counter() - started
        methods.close()
        engine.close()
    return {
        "k": k,
        "slots": getattr(engine, "n_parallel", None),
        "wall_s": round(wall, 2),
        "items_per_min": round(60 * len(rows) / wall, 2),
        "mean_score": round(sum(r["score"] for r in rows) / len(rows), 3),
        "engine_calls": len(calls),
        "mean_batch": round(sum(calls) / max(1, len(calls)), 2),
        "max_batch": max(calls, default=0),
        "tokens": (tokens := sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)),
        # Greedy outputs differ with batch composition, so the passes can take different paths through the
        # same items (one hits max_iterations, the other answers): tokens per second is the rate of work
        # done whatever the path, items per minute what a user of the sweep sees.
        "tokens_per_s": round(tokens / wall, 1),
        "rows": [
            {
                k_: r[k_]
                for k_ in (
                    "item_id",
                    "score",
                    "seconds",
                    "stop",
                    "root_calls",
                    "sub_calls",
                    "prompt_tokens",
                    "completion_tokens",
                    "answer",
                )
            }
            for r in rows
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="niah")
    ap.add_argument("--length", default="1k")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--method", default="rlm")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default=DEFAULT_BACKEND)
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-iterations", type=int, default=6)
    ap.add_argument("--max-timeout", type=float, default=None)
    ap.add_argument("--out", default="scripts/results/bench_sweep_concurrency.json")
    args = ap.parse_args()
    spec = EngineSpec(args.backend, args.model)
    length = parse_length(args.length)
    # K first: if anything (OS page cache, CPU clocks) favours the second pass, it favours K=1.
    passes = [one_pass(spec, args.family, length, args.n, args.method, k, args) for k in (args.k, 1)]
    ratio = round(passes[0]["items_per_min"] / passes[1]["items_per_min"], 2)
    token_ratio = round(passes[0]["tokens_per_s"] / passes[1]["tokens_per_s"], 2)
    table = Table(title=f"{args.n} {args.family} items at {length:,} tokens, method {args.method}, {args.backend}")
    for col in (
        "K",
        "wall s",
        "items/min",
        "mean score",
        "engine calls",
        "mean batch",
        "max batch",
        "tokens",
        "tokens/s",
    ):
        table.add_column(col, justify="right")
    for p in passes:
        table.add_row(
            str(p["k"]),
            f"{p['wall_s']:.1f}",
            f"{p['items_per_min']:.2f}",
            f"{p['mean_score']:.2f}",
            str(p["engine_calls"]),
            f"{p['mean_batch']:.2f}",
            str(p["max_batch"]),
            f"{p['tokens']:,}",
            f"{p['tokens_per_s']:.0f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"throughput K={args.k} / K=1: [bold]{ratio}x[/bold] items per minute, {token_ratio}x tokens per second"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"platform": platform.platform(), "processor": platform.processor()},
                "args": vars(args),
                "ratio": ratio,
                "token_ratio": token_ratio,
                "passes": passes,
            },
            indent=2,
        )
    )
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
