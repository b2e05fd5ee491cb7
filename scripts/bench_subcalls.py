"""Sibling sub-calls on the embedded model: one by one vs through the scheduler vs raw batched generate.

For N = 1, 4, 8, 16, 32 short distinct sub-queries (greedy, up to --new-tokens new tokens each):
  one-by-one  engine.generate([r]) for each request in turn (how the paper issues sub-calls);
  scheduler   Scheduler(engine).submit(requests, run_id): one llm_query_batched call;
  raw         tokenizer + model.generate on the whole left-padded batch, no engine around it.
Reports wall time, completion tokens/s, speedup over one-by-one and the scheduler's share of raw
throughput (raw and scheduler: best of --repeat runs; one-by-one: one run). Targets: >= 4x over
one-by-one at N = 16, >= 90% of raw batched throughput.

Usage: PYTHONPATH=. .venv/bin/python scripts/bench_subcalls.py [--quick] [--out scripts/results/bench_subcalls.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from rlm_local.engines.base import Request
from rlm_local.engines.hf import TransformersEngine
from rlm_local.scheduling.scheduler import Scheduler

TOPICS = [
    "rivers",
    "volcanoes",
    "bees",
    "glaciers",
    "comets",
    "tides",
    "owls",
    "deserts",
    "coral reefs",
    "lichens",
    "thunderstorms",
    "salmon",
    "caves",
    "auroras",
    "ferns",
    "octopuses",
]
ASKS = ["Write two sentences about", "Explain to a child how", "List three facts about"]


def prompts(n: int) -> list[str]:
    return [f"{ASKS[i % 3]} {TOPICS[i % 16]} (note {i}):" for i in range(n)]


def one_by_one(engine: TransformersEngine, requests: list[Request]) -> tuple[float, int]:
    started = time.perf_counter()
    results = [engine.generate([r])[0] for r in requests]
    return time.perf_counter() - started, sum(r.usage.completion_tokens for r in results)


def scheduled(engine: TransformersEngine, requests: list[Request]) -> tuple[float, int, dict]:
    with Scheduler(engine, max_batch=max(32, len(requests))) as scheduler:
        started = time.perf_counter()
        results = scheduler.submit(requests, run_id="bench")
        wall = time.perf_counter() - started
        stats = scheduler.stats.to_dict()
    errors = [r.error for r in results if r.error]
    if errors:
        raise SystemExit(f"scheduler returned errors: {errors[:3]}")
    return wall, sum(r.usage.completion_tokens for r in results), stats


def raw_batched(engine: TransformersEngine, texts: list[str], new_tokens: int) -> tuple[float, int]:
    tok, model = engine.tokenizer, engine.model
    started = time.perf_counter()
    enc = tok(texts, return_tensors="pt", padding=True).to(engine.device)
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
        )
    wall = time.perf_counter() - started
    eos = tok.eos_token_id
    tokens = 0
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        tokens += row.index(eos) if eos in row else len(row)
    return wall, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1, 4 and 8 new tokens: a smoke run")
    parser.add_argument("--sizes", default=None, help="comma-separated N values (default 1,4,8,16,32)")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens per sub-query (default 32)")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many raw and scheduler runs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="scripts/results/bench_subcalls.json")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else ([1, 4] if args.quick else [1, 4, 8, 16, 32])
    new_tokens = args.new_tokens or (8 if args.quick else 32)

    # max_batch = the largest N, so the engine runs a whole llm_query_batched call as one batch like raw does.
    engine = TransformersEngine(threads=args.threads, max_batch=max(sizes))
    engine.generate([Request.completion("Warm up.", max_tokens=2)])
    rows = []
    for n in sizes:
        texts = prompts(n)
        requests = [Request.completion(t, max_tokens=new_tokens) for t in texts]
        # Batched runs are short, so noise from other processes hits them hardest: best of --repeat,
        # alternating the two so both see the same conditions.
        raws, scheds = [], []
        for _ in range(args.repeat):
            raws.append(raw_batched(engine, texts, new_tokens))
            scheds.append(scheduled(engine, requests))
        raw_s, raw_tok = min(raws)
        sched_s, sched_tok, stats = min(scheds, key=lambda x: x[0])
        solo_s, solo_tok = one_by_one(engine, requests)
        row = {
            "n": n,
            "new_tokens": new_tokens,
            "one_by_one_s": round(solo_s, 2),
            "one_by_one_tok_s": round(solo_tok / solo_s, 2),
            "scheduler_s": round(sched_s, 2),
            "scheduler_tok_s": round(sched_tok / sched_s, 2),
            "raw_s": round(raw_s, 2),
            "raw_tok_s": round(raw_tok / raw_s, 2),
            "engine_calls": stats["engine_calls"],
            "tokens": [solo_tok, sched_tok, raw_tok],
        }
        row["speedup_vs_one_by_one"] = round(row["scheduler_tok_s"] / row["one_by_one_tok_s"], 2)
        row["share_of_raw"] = round(row["scheduler_tok_s"] / row["raw_tok_s"], 3)
        rows.append(row)
        print(f"N={n}: one-by-one {solo_s:.1f} s, scheduler {sched_s:.1f} s, raw {raw_s:.1f} s", flush=True)

    print(f"\nsibling sub-calls, {new_tokens} new tokens each, greedy; tok/s = completion tokens / wall s")
    print(
        f"{'N':>3}{'1-by-1 s':>10}{'tok/s':>8}{'sched s':>9}{'tok/s':>8}{'calls':>6}{'raw s':>8}{'tok/s':>8}"
        f"{'speedup':>9}{'of raw':>8}"
    )
    for r in rows:
        print(
            f"{r['n']:>3}{r['one_by_one_s']:>10.2f}{r['one_by_one_tok_s']:>8.2f}{r['scheduler_s']:>9.2f}"
            f"{r['scheduler_tok_s']:>8.2f}{r['engine_calls']:>6}{r['raw_s']:>8.2f}{r['raw_tok_s']:>8.2f}"
            f"{r['speedup_vs_one_by_one']:>8.2f}x{r['share_of_raw']:>8.1%}"
        )
    at16 = next((r for r in rows if r["n"] == 16), None)
    if at16:
        print(
            f"targets at N=16: speedup {at16['speedup_vs_one_by_one']}x (>= 4x), "
            f"{at16['share_of_raw']:.1%} of raw (>= 90%)"
        )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "bench_subcalls",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "platform": platform.platform(),
                    "device": engine.device,
                    "threads": torch.get_num_threads(),
                },
                "model": engine.model_name,
                "quick": args.quick,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out}")
    engine.close()


if __name__ == "__main__":
    main()
