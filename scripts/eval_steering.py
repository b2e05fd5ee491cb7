"""Before/after measurement of the loop's steering of small instruction models (issue 11, deliverable 3).

Runs one fixed item set (needle tasks from ``rlm_local.bench.niah`` and benchmark-kit items) against an
OpenAI-compatible server (llama.cpp serving Qwen2.5-Coder-1.5B-Instruct) with one code base, and appends
one JSON row per item to ``--out``. Run it once per checkout, alternating item by item::

    # before: the code of main, exported to another folder (git archive); PYTHONPATH picks its rlm_local,
    # since python puts the script's folder, not the cwd, first on sys.path
    cd /tmp/before && PYTHONPATH=. python /path/to/scripts/eval_steering.py --label before --item 0 --out rows.jsonl
    # after: this branch
    cd /path/to/branch && PYTHONPATH=. python scripts/eval_steering.py --label after --item 0 --out rows.jsonl

Only the public API is used (RLM, niah.needle_suite, bench.family), so the same script runs on both;
each row records which rlm_local it ran (``code``). The server for the measurement in
scripts/results/eval_steering.md was xllamacpp's llama-server (1 thread, n_ctx 32768, 2 slots, alias
qwen2.5-coder-1.5b) on 127.0.0.1:8411.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import rlm_local
from rlm_local import RLM
from rlm_local.bench import family
from rlm_local.bench.niah import needle_suite


def items() -> list[dict]:
    """The fixed item set: 3 needles (8K-20K characters) and 2 benchmark-kit items (2K tokens)."""
    out = []
    for task in needle_suite(3, 8_000, 20_000, seed=1234):
        out.append(
            {
                "kind": "needle",
                "id": f"needle-{task.key}-{task.length}",
                "context": task.context,
                "question": task.question,
                "gold": task.answer,
                "score": (lambda answer, t=task: float(t.is_correct(answer))),
            }
        )
    for name in ("niah", "oolong"):
        fam = family(name)
        (item,) = fam.generate(2_000, 1, seed=7)
        out.append(
            {
                "kind": f"bench-{name}",
                "id": item.item_id,
                "context": item.context,
                "question": item.question,
                "gold": item.gold,
                "score": (lambda answer, i=item, f=fam: float(f.score(i, answer))),
            }
        )
    return out


def trajectory_stats(path: Path) -> dict:
    """Counts from the run's trajectory: root replies, their lengths, cells, sub-calls, notes seen."""
    stats = {
        "root_turns": 0,
        "root_completion_tokens": [],
        "cells": 0,
        "cell_errors": 0,
        "subcalls": 0,
        "assigns_context": 0,
        "shadow_notes": 0,
        "repeated_replies": 0,
    }
    last_reply = None
    if not path.exists():
        return stats
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        kind = ev.get("type") or ev.get("event")
        if kind in ("root_turn", "RootTurn"):
            stats["root_turns"] += 1
            stats["root_completion_tokens"].append(ev.get("completion_tokens"))
            reply = " ".join((ev.get("reply") or "").split())
            stats["repeated_replies"] += bool(reply) and reply == last_reply
            last_reply = reply
        elif kind in ("cell", "cell_ran", "CellRan"):
            stats["cells"] += 1
            stats["cell_errors"] += ev.get("error") is not None
            stats["assigns_context"] += bool(re.search(r"^\s*context\s*=[^=]", ev.get("code") or "", re.MULTILINE))
            stats["shadow_notes"] += "is a reserved REPL name" in (ev.get("stdout") or "")
        elif kind in ("sub_call", "subcall", "SubCall"):
            stats["subcalls"] += 1
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--item", type=int, action="append", help="item index (repeat); default: all")
    ap.add_argument("--base-url", default="http://127.0.0.1:8411/v1")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--max-timeout", type=float, default=240.0)
    ap.add_argument("--max-iterations", type=int, default=8)
    ap.add_argument("--out", default="scripts/results/eval_steering.jsonl")
    ap.add_argument("--trajectories", default="/tmp/q11/traj")
    args = ap.parse_args()

    all_items = items()
    chosen = args.item if args.item else list(range(len(all_items)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for index in chosen:
        item = all_items[index]
        traj = Path(args.trajectories) / f"{args.label}-{index}.jsonl"
        traj.parent.mkdir(parents=True, exist_ok=True)
        traj.unlink(missing_ok=True)
        rlm = RLM(
            backend="openai",
            backend_kwargs={"model_name": args.model, "base_url": args.base_url},
            max_iterations=args.max_iterations,
            max_timeout=args.max_timeout,
            trajectory_path=str(traj),
            raise_on_limit=False,  # a budget stop is scored with its best answer
        )
        started = time.time()
        error = None
        try:
            result = rlm.completion(item["context"], root_prompt=item["question"])
            answer, stop, turns = result.response, result.stopped_reason, result.iterations
        except Exception as exc:  # a run that crashes is a result too
            answer, stop, turns, error = "", "exception", 0, f"{type(exc).__name__}: {exc}"
        finally:
            rlm.close()
        row = {
            "label": args.label,
            "code": str(Path(rlm_local.__file__).parent.parent),
            "index": index,
            "kind": item["kind"],
            "id": item["id"],
            "question": item["question"],
            "gold": item["gold"],
            "answer": answer[:500],
            "score": item["score"](answer),
            "stopped_reason": stop,
            "iterations": turns,
            "seconds": round(time.time() - started, 1),
            "error": error,
            **trajectory_stats(traj),
        }
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(
            json.dumps(
                {k: row[k] for k in ("label", "index", "kind", "score", "stopped_reason", "iterations", "seconds")}
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
