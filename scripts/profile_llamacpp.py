"""Where the batch goes on llama.cpp: the knobs of the default engine, measured one at a time on the embedded model.

Each probe starts llama.cpp's own server (xllamacpp, in process, outside rlm-local's engine code unless the
probe says so) with one setting changed and measures wall and CPU seconds (CPU counts every thread of this
process, so it is the work done, whatever the machine's load):

  decode       the same N completions of 24 tokens (ignore_eos) one by one vs all at once: CPU per token
               at batch 1, 16 and 64 (the ceiling of batching on this CPU), with 16 or 64 slots, per-slot
               or unified KV cache, and 1 or 2 threads for batches
  prompt       prompt processing of a 1,000-token text at several n_batch sizes (a request is stopped only
               between batches: smaller is more responsive; this shows what it costs)
  short        the siblings of an RLM step (sub-call prompts, answers cut at the first newline) one by one vs
               at once, with and without that stop, prompt caching and the host-RAM prompt cache
  overheads    per-request costs of rlm-local's engine path: tokenizing over the HTTP side channel, and
               saving/restoring a 1,500-token slot (what sharing a prefix costs per sibling)
  engine       rlm-local's engine vs llama.cpp's server alone on the same server: 16 sibling sub-call prompts

  PYTHONPATH=. .venv/bin/python scripts/profile_llamacpp.py [--quick] [--out scripts/results/profile_llamacpp.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlm_local.models import resolve_gguf

WORDS = "river stone ledger harbor copper meadow lantern orchard signal canvas timber falcon".split()


def server(
    slots: int,
    ctx: int,
    batch_threads: int = 1,
    unified: bool = False,
    n_batch: int | None = None,
    cache_ram: int | None = None,
) -> Any:
    import xllamacpp

    p = xllamacpp.CommonParams()
    if cache_ram is not None:
        p.cache_ram_mib = cache_ram
    p.model.path = str(resolve_gguf(None)[0])
    p.n_parallel, p.n_ctx, p.kv_unified = slots, slots * ctx, unified
    p.cpuparams.n_threads, p.cpuparams_batch.n_threads = 1, batch_threads
    p.warmup, p.verbosity, p.port, p.hostnames = False, 0, 0, ["127.0.0.1"]
    if n_batch:
        p.n_batch = p.n_ubatch = n_batch
    return xllamacpp.Server(p)


def timed(fn: Any, *args: Any) -> tuple[float, float, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, value


def completions(srv: Any, n: int, together: bool, tokens: int = 24) -> int:
    def one(i: int) -> int:
        body = {"prompt": f"Story {i}: Once upon a time", "max_tokens": tokens, "temperature": 0.0, "ignore_eos": True}
        return int(srv.handle_completions(body)["usage"]["completion_tokens"])

    if not together:
        return sum(one(i) for i in range(n))
    out = [0] * n
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, one(i))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(out)


def decode_probe(n: int, slots: int, batch_threads: int, unified: bool) -> dict[str, Any]:
    srv = server(slots, 1024, batch_threads, unified)
    try:
        completions(srv, 1, False, 2)  # warm up
        w1, c1, t1 = timed(completions, srv, n, False)
        w2, c2, t2 = timed(completions, srv, n, True)
    finally:
        del srv
    return {
        "n": n,
        "slots": slots,
        "batch_threads": batch_threads,
        "unified_kv": unified,
        "one_by_one": {"wall_s": round(w1, 2), "cpu_s": round(c1, 2), "cpu_ms_per_token": round(1000 * c1 / t1, 1)},
        "together": {"wall_s": round(w2, 2), "cpu_s": round(c2, 2), "cpu_ms_per_token": round(1000 * c2 / t2, 1)},
        "wall_ratio": round(w1 / w2, 2),
        "cpu_ratio": round(c1 / c2, 2),
        "load": round(os.getloadavg()[0], 1),
    }


def prompt_probe(n_batch: int, tokens: int) -> dict[str, Any]:
    srv = server(1, 4096, 1, n_batch=n_batch)
    rng = random.Random(n_batch)
    text = " ".join(rng.choice(WORDS) for _ in range(tokens))
    try:
        wall, cpu, out = timed(srv.handle_completions, {"prompt": text, "max_tokens": 1})
    finally:
        del srv
    n = int(out["timings"]["prompt_n"])
    return {
        "n_batch": n_batch,
        "tokens": n,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "tokens_per_cpu_s": round(n / cpu),
        "cpu_s_per_batch": round(cpu / n * n_batch, 3),
        "load": round(os.getloadavg()[0], 1),
    }


def short_probe(cache_ram: int, variant: dict[str, Any], n: int = 16) -> dict[str, Any]:
    srv = server(16, 2048, 1, n_batch=128, cache_ram=cache_ram)

    def one(i: int) -> tuple[int, int]:
        body = {"prompt": f"Question: Name one fact about {WORDS[i % len(WORDS)]} (note {i}).\nAnswer:"}
        body.update(max_tokens=24, temperature=0.0, cache_prompt=variant.get("cache_prompt", True))
        if variant.get("stop", True):
            body["stop"] = ["\n"]
        out = srv.handle_completions(body)
        return int(out["usage"]["completion_tokens"]), int(out["timings"]["prompt_n"])

    def together() -> list[tuple[int, int]]:
        out: list[Any] = [None] * n
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, one(i))) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    try:
        w1, c1, r1 = timed(lambda: [one(i) for i in range(n)])
        w2, c2, r2 = timed(together)
    finally:
        srv = None  # the destructor stops the server
    return {
        "cache_ram_mib": cache_ram,
        "variant": variant,
        "one_by_one": {"cpu_s": round(c1, 2), "tokens": sum(t for t, _ in r1), "prompt_tokens": sum(p for _, p in r1)},
        "together": {"cpu_s": round(c2, 2), "tokens": sum(t for t, _ in r2), "prompt_tokens": sum(p for _, p in r2)},
        "cpu_ratio": round(c1 / c2, 2),
        "load": round(os.getloadavg()[0], 1),
    }


def overhead_probe() -> dict[str, Any]:
    from rlm_local.engines import Request, make_engine

    engine = make_engine("llamacpp", n_parallel=2, context_length=4096)
    try:
        texts = [f"Question {i}: what is the {w}?\nAnswer:" for i, w in enumerate(WORDS * 4)]
        wall, _, _ = timed(lambda: [engine._tokenize(t) for t in texts])
        rng = random.Random(1)
        doc = " ".join(rng.choice(WORDS) for _ in range(1_400))
        engine.generate([Request.completion(doc, max_tokens=1)])
        save, _, _ = timed(lambda: engine._post("/slots/0?action=save", {"filename": "p.bin"}))
        restore, _, _ = timed(lambda: engine._post("/slots/1?action=restore", {"filename": "p.bin"}))
    finally:
        engine.close()
    return {
        "tokenize_ms_per_request": round(1000 * wall / len(texts), 2),
        "slot_save_ms_1500_tokens": round(1000 * save, 1),
        "slot_restore_ms_1500_tokens": round(1000 * restore, 1),
    }


def engine_probe(n: int) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    import engine_workloads

    from rlm_local.engines import make_engine

    engine = make_engine("llamacpp")
    try:
        ours = engine_workloads.rlm_siblings(engine, n)
        raw = engine_workloads.ceiling(engine, n)
    finally:
        engine.close()
    return {"n": n, "through_rlm": ours, "llama_cpp_alone": raw, "load": round(os.getloadavg()[0], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 siblings only, fewer prompt sizes")
    ap.add_argument("--out", default="scripts/results/profile_llamacpp.json")
    ap.add_argument("--only", default=None, help="probes to run (comma-separated), merged into an existing --out")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    only = set(args.only.split(",")) if args.only else None
    report: dict[str, Any] = {"decode": [], "prompt": [], "short": []}
    out = Path(args.out)
    if only:
        report = {k: v for k, v in json.loads(out.read_text()).items() if k not in only}
        for name in only:
            report[name] = []
    if only is None or "short" in only:
        for cache_ram in (1024, 0):
            for variant in ({}, {"cache_prompt": False}, {"stop": False}):
                report["short"].append(short_probe(cache_ram, variant))
                print(json.dumps(report["short"][-1]), flush=True)
    if only is not None:
        out.write_text(json.dumps({**report, "load_average": os.getloadavg()}, indent=2) + "\n")
        print(f"updated {out}")
        return 0
    sizes = [16] if args.quick else [16, 64]
    for n in sizes:
        for slots in sorted({16, n}):
            report["decode"].append(decode_probe(n, slots, 1, False))
            print(json.dumps(report["decode"][-1]), flush=True)
        if n == 64 and not args.quick:
            report["decode"].append(decode_probe(n, 64, 1, True))
            print(json.dumps(report["decode"][-1]), flush=True)
    if cores > 1:
        report["decode"].append(decode_probe(16, 16, 2, False))
        print(json.dumps(report["decode"][-1]), flush=True)
    for n_batch in [64, 512] if args.quick else [32, 64, 128, 256, 512]:
        report["prompt"].append(prompt_probe(n_batch, 1_000))
        print(json.dumps(report["prompt"][-1]), flush=True)
    report["overheads"] = overhead_probe()
    print(json.dumps(report["overheads"]), flush=True)
    report["engine"] = [engine_probe(n) for n in sizes]
    print(json.dumps(report["engine"]), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(), "cpus": cores}
    out.write_text(json.dumps({**meta, "load_average": os.getloadavg(), **report}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
