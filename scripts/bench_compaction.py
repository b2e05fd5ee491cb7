"""Compaction on a long run of the quality model (Qwen2.5-Coder-1.5B on llama.cpp): turns completed within the
window, with and without compaction.

The task needs many turns and their history: a chain of HOPS clues hidden in filler text, each naming the
next ("Clue alpha: the next clue is named bravo."), the last giving a number; the model must search for
each clue in turn and remember where it is in the chain. The root's window is kept small (a 3,072-token
llama.cpp slot: a 2,496-token prompt budget) so the conversation outgrows it within a few turns. Counted
per run: turns the root took with its whole history in view (nothing dropped: the full turns, or its own
summary of them), turns taken with old turns dropped, compactions, and whether the answer is right.

    python scripts/bench_compaction.py                 # writes scripts/results/bench_compaction.json

(The window is set through the GGUF path and explicit sampling, not ``model_name="quality"``: with the
quality model's card, ``backend_kwargs={"context_length": ...}`` fails today, issue 18.)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
WORDS = "river stone lantern copper meadow harbor signal orchard velvet thunder marble canyon".split()


def chain_task(hops: int, lines: int, seed: int) -> tuple[str, str, str]:
    rng = random.Random(seed)
    answer = str(rng.randint(1000, 9999))
    text = [" ".join(rng.choice(WORDS) for _ in range(10)) + "." for _ in range(lines)]
    clues = [f"Clue {NAMES[i]}: the next clue is named {NAMES[i + 1]}." for i in range(hops - 1)]
    clues.append(f"Clue {NAMES[hops - 1]}: the treasure number is {answer}.")
    for clue, at in zip(clues, rng.sample(range(lines), hops)):
        text[at] = clue
    question = (
        f"Start at the clue named {NAMES[0]} and follow the clues from one to the next (each is a line "
        "'Clue <name>: ...'). What is the treasure number at the end of the chain?"
    )
    return "\n".join(text), question, answer


def run(compaction: bool, args: argparse.Namespace) -> dict:
    from rlm_local import RLM
    from rlm_local.models import resolve_gguf

    context, question, answer = chain_task(args.hops, args.lines, args.seed)
    path, _ = resolve_gguf("quality")
    kwargs = {"model_name": str(path), "context_length": args.window, "n_parallel": 1, "prompt_format": "chat"}
    started = time.monotonic()
    with RLM(
        backend="llamacpp",
        backend_kwargs=kwargs,
        max_iterations=args.turns,
        sampling_args={"max_tokens": args.reply_tokens, "temperature": 0.0},
        sub_sampling_args={"max_tokens": 512},
        compaction=compaction,
        raise_on_limit=False,
        trajectory_path=ROOT / "scripts" / "results" / f"bench_compaction_{'on' if compaction else 'off'}.jsonl",
    ) as rlm:
        result = rlm.completion(context, question)
    turns = [e for e in result.trajectory if e["event"] == "root_turn" and e["depth"] == 0 and not e["compaction"]]
    return {
        "compaction": compaction,
        "turns": len(turns),
        "turns_in_window": sum(e["dropped_turns"] == 0 for e in turns),
        "turns_with_dropped_history": sum(e["dropped_turns"] > 0 for e in turns),
        "max_dropped_turns": max((e["dropped_turns"] for e in turns), default=0),
        "compactions": sum(e["event"] == "compaction" for e in result.trajectory),
        "max_prompt_tokens": max((e["prompt_tokens"] for e in turns), default=0),
        "answer": result.response,
        "correct": answer in result.response,
        "stopped_reason": result.stopped_reason,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=6)
    parser.add_argument("--lines", type=int, default=1500)
    parser.add_argument("--turns", type=int, default=10, help="max_iterations")
    parser.add_argument("--window", type=int, default=3072, help="the llama.cpp slot (root window) in tokens")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--reply-tokens", type=int, default=320, help="root max_tokens (the card's is 512)")
    parser.add_argument("--modes", default="off,on", help="compaction off and/or on (in that order)")
    args = parser.parse_args()
    load = os.getloadavg()
    rows = [run(mode == "on", args) for mode in args.modes.split(",")]  # side by side: the same task and model
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    out = ROOT / "scripts" / "results" / "bench_compaction.json"
    out.write_text(json.dumps({"setup": {**vars(args), "load_average": load}, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
