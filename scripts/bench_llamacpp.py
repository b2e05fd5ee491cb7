"""Quick side-by-side measurement of the llama.cpp engine (the lead's scripts/bench_engines.py is the full kit).

    python scripts/bench_llamacpp.py [--repeats 1] [--words 1000] [--json out.json]

Measures, in one process on the embedded GGUF, one thread:
- single-stream decode tokens/s (one request, 64 new tokens);
- 8 siblings over one NEW chunk of ~1,500 tokens (a fresh chunk per run, so nothing is cached), 32 new
  tokens each: our default (``share_prefix=True``: the prefix computed once, copied into each slot) against
  llama-server's default behaviour (``share_prefix=False``: parallel slots, each computing the chunk),
  and the siblings sent one by one into a single slot (``n_parallel=1``), interleaved, with llama.cpp's
  reported evaluated/cached prompt tokens.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from rlm_local.engines import Request, make_engine

WORDS = "apple river stone cloud green quick lamp paper north seven silver garden window music table".split()


def chunk(seed: int, words: int) -> str:
    rng = random.Random(seed)
    body = " ".join(
        rng.choice(WORDS) + (f" id{rng.randint(100, 999)}." if rng.random() < 0.1 else "") for _ in range(words)
    )
    return f"Record log {seed}:\n{body}\n"


def siblings(engine, text: str) -> dict:
    reqs = [
        Request.completion(f"{text}Question {i}: how many times does the word {w} appear? Answer:", max_tokens=32)
        for i, w in enumerate(WORDS[:8])
    ]
    started = time.perf_counter()
    results = engine.generate(reqs)
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "ok": sum(r.ok for r in results),
        "prompt_tokens": sum(r.usage.prompt_tokens for r in results),
        "computed_tokens": sum(r.usage.prompt_tokens - (r.usage.cached_tokens or 0) for r in results),
        "cached": [r.usage.cached_tokens for r in results],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--words", type=int, default=1000, help="chunk size in words (1,000 words ~ 1,500 tokens)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    ours = make_engine("llamacpp", share_prefix=True)
    default = make_engine("llamacpp", share_prefix=False)
    one_slot = make_engine("llamacpp", share_prefix=False, n_parallel=1)  # siblings one by one in one slot
    rows: dict[str, list] = {"decode_tok_s": [], "ours": [], "llama_default": [], "one_slot": []}
    try:
        for rep in range(args.repeats):
            r = ours.generate([Request.completion("Once upon a time, in a small village,", max_tokens=64)])[0]
            rows["decode_tok_s"].append(round(r.usage.completion_tokens / r.usage.seconds, 2))
            for name, engine in (("ours", ours), ("llama_default", default), ("one_slot", one_slot))[
                :: 1 if rep % 2 == 0 else -1
            ]:
                rows[name].append(siblings(engine, chunk(1000 * rep + len(name), args.words)))
                print(name, rows[name][-1], flush=True)
    finally:
        for engine in (ours, default, one_slot):
            engine.close()
    mean = {k: sum(x["seconds"] for x in v) / len(v) for k, v in rows.items() if k != "decode_tok_s"}
    print(f"single-stream decode: {rows['decode_tok_s']} tok/s")
    print(
        f"8 siblings, cold chunk: ours {mean['ours']:.1f} s, llama-server default {mean['llama_default']:.1f} s, "
        f"speedup {mean['llama_default'] / mean['ours']:.2f}x; one slot, one by one {mean['one_slot']:.1f} s"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
