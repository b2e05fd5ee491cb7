"""Tree-wide budgets checked before a child starts, measured on a scripted deep tree.

Every run below the depth limit starts FANOUT child runs with rlm_query (one after another), then answers
from their answers; the leaves answer at once. Each root turn takes TURN_SECONDS (a scripted model that
sleeps); each child pays a real sandbox start. The whole tree cannot fit the budget, so the budget ends it:
measured is what the tree spent on children that the budget cut off before they answered (started for
nothing), how far past the budget it ran, and whether the root still answered. The same tree runs on the
code before the check (a checkout given with --before, e.g. the branch's base) and after, side by side.

    python scripts/bench_preflight.py --before /tmp/base     # writes scripts/results/bench_preflight.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPTH, FANOUT, TURN_SECONDS = 4, 3, 0.05


def reply(req) -> str:
    time.sleep(TURN_SECONDS)
    first, last = req.messages[1]["content"], req.messages[-1]["content"]
    if "STOP" in last:
        return "FINAL('partial')"
    level = first.count("level") if "level" in first else 0
    if level >= DEPTH - 1:
        return "```repl\nFINAL('leaf')\n```"
    if "Output of" in last:
        return "```repl\nFINAL('done ' + str(len([a for a in answers if 'refused' not in a])))\n```"
    calls = "\n".join(
        f"answers.append(rlm_query('level ' * {level + 1} + 'task {i}', 'doc {i} of some text'))" for i in range(FANOUT)
    )
    return f"```repl\nanswers = []\n{calls}\nprint(answers)\n```"


def worker(budget: str, limit: float) -> dict:
    from rlm_local import RLM
    from rlm_local.engines.scripted import ScriptedEngine

    kwargs = {"max_timeout": limit} if budget == "time" else {"max_tokens": int(limit)}
    if "raise_on_limit" in inspect.signature(RLM).parameters:
        kwargs["raise_on_limit"] = False
    rlm = RLM(
        engine=ScriptedEngine(reply),
        max_depth=DEPTH,
        max_iterations=4,
        implicit_batching=False,
        scheduler_kwargs={"memo": False},  # every turn costs its tokens, as with a real model
        **kwargs,
    )
    started = time.monotonic()
    with rlm:
        result = rlm.completion("the top document " * 20, "the top question")
    seconds = time.monotonic() - started
    events = result.trajectory
    rlm_calls = [e for e in events if e["event"] == "subcall" and e["query"] == "rlm"]
    cut = [e for e in rlm_calls if e.get("stopped_reason") not in (None, "final")]
    refused = [e for e in rlm_calls if (e.get("error") or "").startswith("[rlm_query refused")]
    tokens = result.usage_summary.total.total_tokens
    return {
        "budget": budget,
        "limit": limit,
        "children_started": sum(e["event"] == "child_start" for e in events),
        "children_cut_off": len(cut),
        "children_refused": len(refused),
        "cut_off_child_turns": sum(e.get("iterations") or 0 for e in cut),
        "root_turns": sum(e["event"] == "root_turn" for e in events),
        "seconds": round(seconds, 2),
        "past_deadline_s": round(seconds - limit, 2) if budget == "time" else None,
        "tokens": tokens,
        "tokens_over_budget": tokens - int(limit) if budget == "tokens" else None,
        "stopped_reason": result.stopped_reason,
        "answer": result.response,
    }


def run(tree: Path, budget: str, limit: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", budget, str(limit)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the code before the check (e.g. the base commit)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--time-limits", default="3,6", help="max_timeout values (seconds)")
    parser.add_argument("--token-limits", default="10000,20000", help="max_tokens values")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], float(args.worker[1]))))
        return 0
    rows = []
    trees = {"before": args.before, "after": ROOT}
    for budget, limits in (("time", args.time_limits), ("tokens", args.token_limits)):
        for limit in [float(x) for x in limits.split(",")]:
            for label, tree in trees.items():  # side by side: the same tree and budget, one after the other
                if tree is None:
                    continue
                rows.append({"code": label, **run(tree, budget, limit)})
    cols = ["code", "budget", "limit", "children_started", "children_cut_off", "children_refused",
            "cut_off_child_turns", "root_turns", "seconds", "past_deadline_s", "tokens", "tokens_over_budget",
            "stopped_reason", "answer"]  # fmt: skip
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c)) for c in cols))
    out = ROOT / "scripts" / "results" / "bench_preflight.json"
    meta = {"depth": DEPTH, "fanout": FANOUT, "turn_seconds": TURN_SECONDS, "load_average": os.getloadavg()}
    out.write_text(json.dumps({"setup": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
