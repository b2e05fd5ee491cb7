"""Workloads of scripts/bench_engines.py that compare two ways of doing the same work inside one measurement,
so their ratio is taken side by side on a noisy machine:

  rlm_siblings16/64  N sibling llm_query prompts through RLM (the sub-call engine under test, a scripted
                     root): forced one by one (each prompt depends on the previous answer) vs one
                     llm_query_batched call
  ceiling16/64       llama.cpp's own batching outside rlm-local's engine code: the same prompts as token ids
                     straight to the engine's llama.cpp server (same slots, threads and sampling), one by
                     one vs all at once: the most batching can give on this machine (llama.cpp engines only)
  sweep              the same 8 needle items (benchmark kit, 1K tokens) run one at a time (K=1) vs 8 at a
                     time (K=8) through one RLM: items per minute
  cancel             a long request through the scheduler, its run cancelled during prompt processing and
                     during decoding: CPU seconds the engine used from the cancel until it was idle again
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rlm_local.engines import Engine, Request
from rlm_local.engines.scripted import ScriptedEngine

TOPICS = (
    "rivers volcanoes bees glaciers comets tides owls deserts coral-reefs lichens thunderstorms salmon caves "
    "auroras ferns octopuses"
).split()
SUB_TOKENS = 24  # an answer's length cap for the siblings, as `sub_max_tokens`


def sibling_prompts(n: int) -> list[str]:
    return [f"Name one fact about {TOPICS[i % len(TOPICS)]} (note {i})." for i in range(n)]


def _sibling_code(n: int, batched: bool) -> str:
    prompts = f"prompts = {sibling_prompts(n)!r}\n"
    if batched:
        return prompts + "answers = llm_query_batched(prompts)\nprint(len(answers))"
    # `prev[:0]` is empty, so the prompts are the same, but each call waits for the previous answer
    return (
        prompts
        + "answers, prev = [], ''\nfor p in prompts:\n    prev = llm_query(p + prev[:0])\n    answers.append(prev)"
    )


def _rlm_siblings_once(engine: Engine, n: int, batched: bool) -> dict[str, Any]:
    from rlm_local.rlm import RLM

    root = ScriptedEngine([f"```repl\n{_sibling_code(n, batched)}\n```", "FINAL(done)"])
    with RLM(engine=root, sub_engine=engine, sub_max_tokens=SUB_TOKENS, scheduler_kwargs={"memo": False}) as rlm:
        cpu, started = time.process_time(), time.perf_counter()
        result = rlm.completion("siblings", root_prompt="q")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    subs = [e for e in result.trajectory if e["event"] == "subcall"]
    errors = [e["error"] for e in subs if e.get("error")]
    if len(subs) != n or errors:
        raise RuntimeError(f"{len(subs)} of {n} sub-calls ran; errors: {errors[:2]}")
    return {"seconds": seconds, "cpu": cpu, "tokens": sum(e["usage"]["completion_tokens"] for e in subs)}


def rlm_siblings(engine: Engine, n: int) -> dict[str, Any]:
    one = _rlm_siblings_once(engine, n, batched=False)
    batch = _rlm_siblings_once(engine, n, batched=True)
    return {
        "seconds": round(batch["seconds"], 3),
        "one_by_one_s": round(one["seconds"], 3),
        "batched_s": round(batch["seconds"], 3),
        "ratio": round(one["seconds"] / batch["seconds"], 2),
        "cpu_ratio": round(one["cpu"] / batch["cpu"], 2) if batch["cpu"] else None,
        "tokens": [one["tokens"], batch["tokens"]],
    }


def ceiling(engine: Engine, n: int) -> dict[str, Any]:
    """llama.cpp's server, given the siblings' token ids directly (no planner, no scheduler, no RLM)."""
    server = getattr(engine, "_server", None)
    if server is None:
        raise RuntimeError("only for llama.cpp engines")
    from rlm_local.loop.formats import format_named

    fmt = format_named(engine.prompt_format)
    requests = [fmt.subcall(p, {"max_tokens": SUB_TOKENS, "temperature": 0.0}) for p in sibling_prompts(n)]
    ids = [engine._tokenize(engine.render(r)) for r in requests]  # type: ignore[attr-defined]
    stop = list(requests[0].sampling.stop)

    def one(i: int) -> int:
        body = {"prompt": ids[i], "max_tokens": SUB_TOKENS, "temperature": 0.0, "cache_prompt": True, "stop": stop}
        out = server.handle_completions(body)
        return int(out["usage"]["completion_tokens"])

    started = time.perf_counter()
    alone = sum(one(i) for i in range(n))
    one_by_one = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        together = sum(pool.map(one, range(n)))
    batched = time.perf_counter() - started
    return {
        "seconds": round(batched, 3),
        "one_by_one_s": round(one_by_one, 3),
        "batched_s": round(batched, 3),
        "ratio": round(one_by_one / batched, 2),
        "tokens": [alone, together],
    }


def _sweep_once(engine: Engine, items: list[Any], score: Any, k: int) -> dict[str, Any]:
    from rlm_local.rlm import RLM

    with RLM(engine=engine, max_iterations=6, scheduler_kwargs={"memo": False}) as rlm:
        started = time.perf_counter()
        with ThreadPoolExecutor(k) as pool:
            results = list(pool.map(lambda it: rlm.completion(it.context, root_prompt=it.question), items))
        seconds = time.perf_counter() - started
    totals = [r.usage_summary.total for r in results]
    return {
        "seconds": seconds,
        "score": statistics.mean(score(it, r.response) for it, r in zip(items, results)),
        "tokens": sum(t.prompt_tokens + t.completion_tokens for t in totals),
    }


def sweep(engine: Engine, items_n: int = 24, k: int = 8) -> dict[str, Any]:
    """The same items one at a time and k at a time. Three items per run at once: with as many items as
    runs, a pass lasts as long as its slowest item, whatever the engine does for the others."""
    from rlm_local.bench.items import family

    niah = family("niah")
    items = niah.generate(1_000, items_n, seed=0)  # the same items for both
    one = _sweep_once(engine, items, niah.score, 1)
    many = _sweep_once(engine, items, niah.score, k)
    per_min = [round(60 * len(items) / r["seconds"], 2) for r in (one, many)]
    return {
        "seconds": round(many["seconds"], 3),
        "k1_s": round(one["seconds"], 3),
        f"k{k}_s": round(many["seconds"], 3),
        "items_per_min": per_min,
        "ratio": round(per_min[1] / per_min[0], 2),
        "mean_score": [round(one["score"], 3), round(many["score"], 3)],
        # greedy paths differ with batch composition: tokens per second is the work rate whatever the path
        "tokens": [one["tokens"], many["tokens"]],
        "token_ratio": round((many["tokens"] / many["seconds"]) / (one["tokens"] / one["seconds"]), 2),
    }


def _engine_cpu(engine: Engine) -> float:
    """CPU seconds of this process and of the engine's own processes (vLLM's engine core)."""
    import psutil

    total = sum(psutil.Process().cpu_times()[:2])
    for pid in getattr(engine, "_children", ()) or ():
        try:
            total += sum(psutil.Process(pid).cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def _cancel_once(engine: Engine, request: Request, after: float) -> dict[str, Any]:
    from rlm_local.scheduling.scheduler import Scheduler

    with Scheduler(engine, window_ms=0) as scheduler:
        out: list[Any] = []
        worker = threading.Thread(target=lambda: out.append(scheduler.submit([request], run_id="cancel-me")))
        worker.start()
        time.sleep(after)
        if not worker.is_alive():
            raise RuntimeError("the request finished before the cancel")
        cpu = _engine_cpu(engine)
        scheduler.cancel("cancel-me")
        worker.join(60)
        time.sleep(1.0)  # work still going on in the engine after the caller was answered shows up here
        used = _engine_cpu(engine) - cpu
        # the engine call itself returns once the engine stopped; wait for it before the next measurement
        end = time.monotonic() + 120
        while scheduler.stats.engine_calls == 0 and time.monotonic() < end:
            time.sleep(0.05)
    return {"cpu_after_cancel_s": round(used, 3)}


def cancel(engine: Engine) -> dict[str, Any]:
    words = "apple river stone cloud green quick lamp paper north seven".split()
    long_prompt = " ".join(words[(i * 7) % len(words)] + str(i % 97) for i in range(1_400))  # ~2,500 new tokens
    prompt = _cancel_once(engine, Request.completion(long_prompt, max_tokens=8), after=1.0)
    decode = _cancel_once(engine, Request.completion("Once upon a time", max_tokens=2_000), after=3.0)
    worst = max(prompt["cpu_after_cancel_s"], decode["cpu_after_cancel_s"])
    return {
        "seconds": worst,
        "prompt_cpu_s": prompt["cpu_after_cancel_s"],
        "decode_cpu_s": decode["cpu_after_cancel_s"],
    }


def describe(row: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in row.items() if k != "seconds"})
