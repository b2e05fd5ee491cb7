"""KV prefix reuse on the transformers engine (embedded Gemma 3 270M, CPU by default).

Two workloads:
  siblings  8 sub-queries over one ~1,500-token chunk, different questions, 16 new tokens each:
            recomputed (prefix cache off, one request at a time, as a naive RLM issues them) vs reused
            (prefix cache on, one engine call: the chunk is computed once, the 8 run as one batch over it).
  root      turns 1..8 of a growing root conversation (each prompt = previous prompt + reply + REPL
            output): fresh (prefix cache off) vs reused (turn N continues from turn N-1's cache).
Greedy outputs must be identical between the two modes; the script checks and prints it.

Usage: PYTHONPATH=. .venv/bin/python scripts/bench_prefix.py [--quick] [--out scripts/results/bench_prefix.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

from rlm_local.engines.base import Request
from rlm_local.engines.hf import TransformersEngine
from rlm_local.engines.prefix_cache import PrefixCache

QUESTIONS = [
    "Which warehouse shipped the most crates?",
    "What colour is the seal on batch 17?",
    "Who signed the inspection of batch 4?",
    "How many crates were returned in total?",
    "Which batch was delayed, and why?",
    "What is the heaviest batch, in kilograms?",
    "List the inspectors named in the log.",
    "Was any batch shipped twice? Answer yes or no and give the batch.",
]
COLOURS = ["red", "blue", "green", "amber", "violet", "white"]
NAMES = ["Ana Ruiz", "Tom Becker", "Li Wei", "Sara Okafor", "Jon Park", "Mia Novak"]


def make_chunk(engine: TransformersEngine, tokens: int) -> str:
    """A shipping log of roughly ``tokens`` tokens: varied enough that the model has something to read."""
    lines: list[str] = []
    i = 0
    while engine.count_tokens("\n".join(lines)) < tokens:
        lines.append(
            f"Batch {i}: {10 + i * 7 % 40} crates from warehouse {'ABCDE'[i % 5]}, {200 + i * 37 % 900} kg, "
            f"seal {COLOURS[i % 6]}, inspected by {NAMES[i % 6]}; {i * 3 % 7} returned."
        )
        i += 1
    return "\n".join(lines)


def sibling_prompt(chunk: str, question: str) -> str:
    return (
        "You are reading one chunk of a shipping log. Answer the question from the chunk only.\n\n"
        f"Chunk:\n{chunk}\n\nQuestion: {question}\nAnswer:"
    )


def bench_siblings(engine: TransformersEngine, chunk_tokens: int, n: int, new_tokens: int) -> dict:
    chunk = make_chunk(engine, chunk_tokens)
    requests = [Request.completion(sibling_prompt(chunk, q), max_tokens=new_tokens) for q in QUESTIONS[:n]]
    engine.prefix_cache = None
    started = time.perf_counter()
    recomputed = [engine.generate([r])[0] for r in requests]
    recompute_s = time.perf_counter() - started

    engine.prefix_cache = PrefixCache()
    started = time.perf_counter()
    reused = engine.generate(requests)
    reuse_s = time.perf_counter() - started
    # The same call again with the chunk's prefix already in the LRU (a later llm_query_batched over the
    # same chunk, or the second max_batch slice of a big one): nothing of the chunk is recomputed.
    started = time.perf_counter()
    warm = engine.generate(requests)
    warm_s = time.perf_counter() - started
    identical = [a.text == b.text == c.text for a, b, c in zip(recomputed, reused, warm)]
    errors = [r.error for r in recomputed + reused + warm if r.error]
    return {
        "siblings": n,
        "new_tokens": new_tokens,
        "prompt_tokens": [r.usage.prompt_tokens for r in reused],
        "cached_tokens": [r.usage.cached_tokens for r in reused],
        "cached_tokens_warm": [r.usage.cached_tokens for r in warm],
        "recompute_s": round(recompute_s, 2),
        "reuse_s": round(reuse_s, 2),
        "reuse_warm_s": round(warm_s, 2),
        "speedup": round(recompute_s / reuse_s, 2),
        "speedup_warm": round(recompute_s / warm_s, 2),
        "identical": all(identical) and not errors,
        "errors": errors,
    }


def repl_output(turn: int) -> str:
    rows = "\n".join(
        f"  chunk {turn}.{j}: {17 * turn + 5 * j} matches, first at line {31 * j + turn}" for j in range(8)
    )
    return f"Output of cell {turn}:\n{rows}\nlen(context) = 48213"


def bench_root(engine: TransformersEngine, system_tokens: int, turns: int, new_tokens: int) -> dict:
    system = (
        "You are the root of a recursive language model. Write Python in ```repl``` blocks to inspect the "
        "variable `context`; call llm_query(prompt) for sub-questions; finish with FINAL(answer).\n\n"
        "Notes from earlier work:\n" + make_chunk(engine, system_tokens)
    )
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": "Question: which warehouse shipped the most crates? Start exploring."},
    ]
    engine.prefix_cache = PrefixCache()
    rows, requests, reused = [], [], []
    for turn in range(1, turns + 1):
        request = Request.chat(messages, max_tokens=new_tokens)
        started = time.perf_counter()
        [res] = engine.generate([request])
        rows.append(
            {
                "turn": turn,
                "prompt_tokens": res.usage.prompt_tokens,
                "cached_tokens": res.usage.cached_tokens,
                "reused_s": round(time.perf_counter() - started, 2),
            }
        )
        requests.append(request)
        reused.append(res)
        messages = messages + [
            {"role": "assistant", "content": res.text},
            {"role": "user", "content": repl_output(turn)},
        ]
    engine.prefix_cache = None
    for row, request, res in zip(rows, requests, reused):
        started = time.perf_counter()
        [fresh] = engine.generate([request])
        row["fresh_s"] = round(time.perf_counter() - started, 2)
        row["speedup"] = round(row["fresh_s"] / row["reused_s"], 2)
        row["identical"] = fresh.text == res.text and fresh.ok and res.ok
    total_fresh = sum(r["fresh_s"] for r in rows)
    total_reused = sum(r["reused_s"] for r in rows)
    return {
        "turns": rows,
        "new_tokens": new_tokens,
        "fresh_s": round(total_fresh, 2),
        "reused_s": round(total_reused, 2),
        "speedup": round(total_fresh / total_reused, 2),
        "identical": all(r["identical"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="scripts/results/bench_prefix.json")
    args = parser.parse_args()
    chunk_tokens, siblings, turns, root_tokens = (300, 4, 3, 8) if args.quick else (1500, 8, 8, 32)

    engine = TransformersEngine(threads=args.threads)
    engine.generate([Request.completion("Warm up.", max_tokens=2)])
    sib = bench_siblings(engine, chunk_tokens, siblings, 16 if not args.quick else 8)
    root = bench_root(engine, 600 if not args.quick else 150, turns, root_tokens)

    print(
        f"\nsiblings: {sib['siblings']} questions over one chunk, prompt tokens {min(sib['prompt_tokens'])}-"
        f"{max(sib['prompt_tokens'])}, {sib['new_tokens']} new tokens each"
    )
    print(f"{'mode':<34}{'wall s':>9}{'speedup':>9}")
    print(f"{'recomputed (one by one, no cache)':<34}{sib['recompute_s']:>9.2f}")
    print(
        f"{'reused (one batch over the prefix)':<34}{sib['reuse_s']:>9.2f}{sib['speedup']:>8.2f}x  prefix computed in the call"
    )
    print(
        f"{'reused, prefix already in the LRU':<34}{sib['reuse_warm_s']:>9.2f}{sib['speedup_warm']:>8.2f}x  same call repeated"
    )
    print(
        f"target >= 6x; cached tokens {sib['cached_tokens']} then {sib['cached_tokens_warm']}; "
        f"outputs identical: {sib['identical']}"
    )
    print(f"\nroot conversation: {len(root['turns'])} turns, {root['new_tokens']} new tokens each")
    print(f"{'turn':>4}{'prompt':>8}{'cached':>8}{'fresh s':>9}{'reused s':>10}{'speedup':>9}  identical")
    for r in root["turns"]:
        print(
            f"{r['turn']:>4}{r['prompt_tokens']:>8}{r['cached_tokens']:>8}{r['fresh_s']:>9.2f}{r['reused_s']:>10.2f}"
            f"{r['speedup']:>9.2f}  {r['identical']}"
        )
    print(
        f"total: fresh {root['fresh_s']} s, reused {root['reused_s']} s, speedup {root['speedup']}x; "
        f"outputs identical: {root['identical']}"
    )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "bench_prefix",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"platform": platform.platform(), "device": engine.device, "threads": args.threads},
                "model": engine.model_name,
                "quick": args.quick,
                "siblings": sib,
                "root": root,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out}")
    engine.close()


if __name__ == "__main__":
    main()
