"""Needle-in-a-haystack accuracy of an RLM: N generated tasks (different needles, depths, lengths).

    python scripts/eval_niah.py                       # the embedded model, 10 tasks, 50K-500K characters
    python scripts/eval_niah.py --backend openai --base-url http://127.0.0.1:8000/v1 --model qwen3-coder

Prints a table (one row per task) and writes JSON with every answer, timing and usage.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rlm_local import RLM
from rlm_local.bench.niah import needle_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="transformers")
    ap.add_argument("--model", default=None)
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--min-length", type=int, default=50_000)
    ap.add_argument("--max-length", type=int, default=500_000)
    ap.add_argument("--max-iterations", type=int, default=6)
    ap.add_argument("--out", default="scripts/results/eval_niah.json")
    ap.add_argument("--trajectory", default=None, help="append every run's events to this JSONL file")
    args = ap.parse_args()

    console = Console()
    kwargs = {"model_name": args.model}
    if args.base_url:
        kwargs["base_url"] = args.base_url
    started = time.time()
    rlm = RLM(
        backend=args.backend, backend_kwargs=kwargs, max_iterations=args.max_iterations, trajectory_path=args.trajectory
    )
    load_seconds = time.time() - started
    tasks = needle_suite(args.tasks, args.min_length, args.max_length)
    rows = []
    table = Table(title=f"needle in a haystack: {rlm.engine.model_name} ({args.backend})")
    for col in ("#", "length", "depth", "key", "expected", "answer", "ok", "turns", "stop", "seconds"):
        table.add_column(col)
    for i, task in enumerate(tasks):
        result = rlm.completion(task.context, root_prompt=task.question)
        ok = task.is_correct(result.response)
        rows.append(
            {
                "length": task.length,
                "depth": task.depth,
                "key": task.key,
                "expected": task.answer,
                "answer": result.response,
                "correct": ok,
                "iterations": result.iterations,
                "stopped_reason": result.stopped_reason,
                "seconds": round(result.execution_time, 2),
                "usage": result.usage_summary.to_dict(),
            }
        )
        table.add_row(
            str(i + 1),
            f"{task.length:,}",
            f"{task.depth:.2f}",
            task.key,
            task.answer,
            result.response[:40],
            "yes" if ok else "no",
            str(result.iterations),
            result.stopped_reason,
            f"{result.execution_time:.1f}",
        )
        console.print(f"task {i + 1}/{len(tasks)}: {'correct' if ok else 'wrong'} ({result.execution_time:.1f} s)")
    rlm.close()
    correct = sum(r["correct"] for r in rows)
    console.print(table)
    console.print(f"[bold]{correct}/{len(rows)} correct[/bold]; model load {load_seconds:.1f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "backend": args.backend,
                "model": rlm.engine.model_name,
                "correct": correct,
                "tasks": len(rows),
                "load_seconds": round(load_seconds, 2),
                "rows": rows,
            },
            indent=2,
        )
    )
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
