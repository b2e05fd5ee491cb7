"""Which vLLM mode serves concurrent RLM runs faster: `LLM` (backend vllm) or `AsyncLLM` (backend vllm-async)?

Both run the embedded Gemma 3 270M through the same shared scheduler, as `rlm-local serve` does. With `LLM`
the scheduler issues one `llm.generate` list at a time, so a request that arrives while a list runs waits
for the whole list (its longest reply) to end; with `AsyncLLM` the scheduler hands each gathered batch over
at once and vLLM adds it to the running batch step by step (continuous batching).

Workloads (each run twice per mode; the first warms vLLM's prefix cache and the sandbox):
  rlm     N concurrent RLM runs, scripted root (the embedded model cannot write REPL code), real sub-calls on
          vLLM: each run makes 3 rounds of `llm_query_batched` (4 prompts) then one `llm_query`, questions the
          model answers with long lists; the runs' reply lengths differ (sub_max_tokens 16 / 64 / 160).
  clients C closed-loop clients, each sending 6 short completions one after another (16 or 64 tokens).
The modes start one after the other (one engine core at a time); vLLM start-up is timed too.

Usage (a main guard is required: vLLM's engine core is a spawned process):
  PYTHONPATH=. python scripts/bench_vllm_modes.py [--runs 8] [--clients 8] [--out scripts/results/bench_vllm_modes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from rlm_local import RLM
from rlm_local.engines import make_engine
from rlm_local.engines.base import Engine, Request
from rlm_local.engines.scripted import ScriptedEngine
from rlm_local.scheduling.scheduler import Scheduler

# Sub-call questions that the embedded base model answers at length on one line (a list), so replies run up
# to sub_max_tokens; short factual questions get 1-token answers ending at the newline stop.
ROOT_CELL = """```repl
facts = []
for round_ in range(3):
    facts += llm_query_batched([f"Name thirty cities of Europe, separated by commas. Run {RUN}, round {round_}, "
                                f"group {group}." for group in range(4)])
summary = llm_query("Write the alphabet letters separated by spaces, then the numbers 1 to 40. Run {RUN}.")
print(len(facts), summary[:40])
```"""
SUB_TOKENS = (16, 64, 160)


def rlm_workload(engine: Engine, runs: int) -> dict:
    """``runs`` RLM runs at once; returns wall time, per-run latencies and the sub-call count."""
    latencies: list[float] = [0.0] * runs
    subcalls: list[int] = [0] * runs
    tokens: list[int] = [0] * runs
    errors: list[str] = []

    def one(i: int) -> None:
        root = ScriptedEngine([ROOT_CELL.replace("{RUN}", str(i)), "FINAL(done)"])
        rlm = RLM(
            backend="scripted",
            engine=root,
            sub_engine=engine,
            sub_max_tokens=SUB_TOKENS[i % len(SUB_TOKENS)],
            max_iterations=3,
        )
        started = time.perf_counter()
        try:
            result = rlm.completion("context", root_prompt="q")
        finally:
            rlm.close()
        latencies[i] = time.perf_counter() - started
        calls = [e for e in result.trajectory if e["event"] == "subcall"]
        subcalls[i] = len(calls)
        tokens[i] = result.usage_summary.by_model[engine.model_name].completion_tokens  # sub-calls only
        errors.extend(e["error"] for e in calls if e["error"])
        if result.response != "done":
            errors.append(f"run {i} ended {result.stopped_reason}")

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "wall_s": round(time.perf_counter() - started, 2),
        "mean_run_s": round(statistics.mean(latencies), 2),
        "max_run_s": round(max(latencies), 2),
        "subcalls": sum(subcalls),
        "completion_tokens": sum(tokens),
        "errors": errors[:5],
    }


def clients_workload(engine: Engine, clients: int, per_client: int = 6) -> dict:
    """``clients`` closed-loop clients through one scheduler; returns wall time and request latencies."""
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    with Scheduler(engine) as sched:

        def client(c: int) -> None:
            for k in range(per_client):
                req = Request.completion(
                    f"Client {c} asks question {k}: the best way to cook rice is", max_tokens=16 if (c + k) % 2 else 64
                )
                started = time.perf_counter()
                (res,) = sched.submit([req], run_id=f"client-{c}")
                with lock:
                    latencies.append(time.perf_counter() - started)
                    tokens[0] += res.usage.completion_tokens

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    return {
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens[0] / wall, 1),
        "mean_latency_s": round(statistics.mean(latencies), 2),
        "requests": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", default="scripts/results/bench_vllm_modes.json")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    rows: list[dict] = []
    for backend in ("vllm", "vllm-async"):
        started = time.perf_counter()
        engine = make_engine(backend, model_name="embedded", max_model_len=4096, seed=0)
        startup = round(time.perf_counter() - started, 1)
        try:
            for rep in (1, 2):
                rows.append(
                    {
                        "backend": backend,
                        "workload": f"rlm x{args.runs}",
                        "rep": rep,
                        "startup_s": startup,
                        **rlm_workload(engine, args.runs),
                    }
                )
                rows.append(
                    {
                        "backend": backend,
                        "workload": f"clients x{args.clients}",
                        "rep": rep,
                        "startup_s": startup,
                        **clients_workload(engine, args.clients),
                    }
                )
        finally:
            engine.close()
    print(f"{'backend':<11} {'workload':<11} rep {'start s':>7} {'wall s':>7}  details")
    for r in rows:
        details = {k: v for k, v in r.items() if k not in ("backend", "workload", "rep", "startup_s", "wall_s")}
        print(f"{r['backend']:<11} {r['workload']:<11} {r['rep']:>3} {r['startup_s']:>7} {r['wall_s']:>7}  {details}")
    second = {(r["backend"], r["workload"]): r["wall_s"] for r in rows if r["rep"] == 2}
    ratios = {w: round(second[("vllm", w)] / second[("vllm-async", w)], 2) for b, w in second if b == "vllm"}
    print("LLM wall / AsyncLLM wall (rep 2, >1 means AsyncLLM is faster):", ratios)
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "model": "gemma-3-270m (embedded, bf16)",
        "vllm_cpu_kvcache_gib": os.environ["VLLM_CPU_KVCACHE_SPACE"],
        "rows": rows,
        "llm_over_async_wall": ratios,
        "note": "shared 2-core machine with other jobs running: rough ratios only",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
