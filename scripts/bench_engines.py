"""Every engine that runs here, on the same workloads, interleaved and repeated: which one should be the default?

An RLM asks two different things of an engine. Root turns are one stream at a time (single-stream decode
speed decides); sub-calls are wide batches of siblings that often share a long chunk (batching and
prefix reuse decide). This script measures both, plus whole runs:

  decode        one request, 64 new tokens: tokens/s of a single stream
  siblings16    16 short prompts in one batch, 32 new tokens each
  cold_chunk8   8 questions over one new ~1,500-token chunk in one batch (a fresh chunk every time, so no
                engine can reuse a previous repeat's cache), 16 new tokens each
  cold_starts8  the same 8 questions as 8 separate calls 0.2 s apart: the first turns of 8 concurrent runs
  demo          the task of `rlm-local run --demo` on the loaded engines (model load excluded)
  demo_cli      `rlm-local run --demo` as a user runs it: a new process, imports and model load included
  sweep8        8 needle items (benchmark kit, 1K tokens) run as 8 concurrent RLM runs
  rlm_siblings16, rlm_siblings64, ceiling16, ceiling64, sweep, cancel: two ways of doing the same work
                measured side by side in one call (one by one vs batched, K=1 vs K=8, the CPU a cancelled
                request still uses); see scripts/engine_workloads.py

Engines (``--engines``): ``transformers`` (in process, the embedded model's safetensors copy),
``llamacpp`` (in process, the packaged GGUF as it is), ``vllm`` (vLLM for CPU, ``LLM``), ``vllm-async``
(``AsyncLLM``) and ``llama-server`` (llama.cpp's own server code with its default behaviour, parallel slots
that each compute their own prompt: what a CPU user would run instead; called in process, so it differs
from ``llamacpp`` only in our shared-prefix handling). Whole runs
(``--setups``) may use one engine for root turns and another for sub-calls: ``llamacpp+transformers``
means root turns on llama.cpp and sub-calls on transformers.

Every engine is loaded once; each repeat then runs every workload on every engine, in an order that
rotates between repeats (so no engine always goes first on a cooler machine). The table shows the median
over repeats and the ratio to the reference engine; the JSON has every single measurement.

  .venv/bin/python scripts/bench_engines.py                      # all engines that import here
  .venv/bin/python scripts/bench_engines.py --engines transformers,llamacpp --repeats 3
  .venv/bin/python scripts/bench_engines.py --quick              # the default engine's batching record, ~10 min
  .venv/bin/python scripts/bench_engines.py --engines llamacpp,llama-server --workloads cold_starts8 \
      --model quality --reference llama-server --repeats 1       # llama.cpp workloads on the quality model

Every run also writes the table as Markdown next to the JSON (``--out`` with ``.md``): README's engine
table is that file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import engine_workloads as pair
from rich.console import Console
from rich.table import Table

from rlm_local.engines import Engine, Request, make_engine
from rlm_local.errors import Error

WORKLOADS = (
    "decode",
    "siblings16",
    "cold_chunk8",
    "cold_starts8",
    "rlm_siblings16",
    "rlm_siblings64",
    "ceiling16",
    "ceiling64",
    "sweep",
    "cancel",
    "demo",
    "demo_cli",
    "sweep8",
)
QUICK = dict(
    engines="llamacpp,llama-server",
    workloads="decode,cold_chunk8,cold_starts8,rlm_siblings16,ceiling16,rlm_siblings64,ceiling64,sweep,cancel",
    repeats=1,
    reference="llama-server",
)
LLAMA_ONLY = ("ceiling16", "ceiling64")
PAIR_KEYS = (
    "one_by_one_s",
    "batched_s",
    "ratio",
    "k1_s",
    "k8_s",
    "token_ratio",
    "prompt_cpu_s",
    "decode_cpu_s",
)  # llama.cpp's own server: only engines that have one
ENGINES = ("transformers", "llamacpp", "vllm", "vllm-async", "llama-server")
SETUPS = ("transformers", "llamacpp", "llamacpp+transformers", "llamacpp+vllm-async", "vllm-async", "llama-server")
WORDS = (
    "river stone ledger harbor copper meadow lantern orchard signal canvas timber falcon quarry velvet "
    "summit anchor thistle beacon marble cedar"
).split()
log = logging.getLogger("bench_engines")


# ---- engines ---------------------------------------------------------------------------------------------------
def make_named_engine(
    name: str, threads: int, batch_threads: int | None = None, model: str | None = None
) -> tuple[Engine, Callable[[], None]]:
    """The engine called ``name`` (``model``: a packaged model for the llama.cpp engines; default the embedded
    one) and a function that releases everything it started."""
    gguf = {"model_name": model} if model else {}
    if name == "transformers":
        engine = make_engine("transformers", threads=threads)
        return engine, engine.close
    if name == "llamacpp":
        engine = make_engine("llamacpp", threads=threads, batch_threads=batch_threads, **gguf)
        return engine, engine.close
    if name in ("vllm", "vllm-async"):
        from rlm_local.models import ensure_embedded

        engine = make_engine(name, model_name=str(ensure_embedded()))
        return engine, engine.close
    if name == "llama-server":
        # llama.cpp's server code with its defaults (parallel slots, each computing its own prompt; the prompt
        # cache kept per slot), called in process like our engine so the two differ only in prefix sharing.
        engine = make_engine("llamacpp", threads=threads, batch_threads=batch_threads, share_prefix=False, **gguf)
        return engine, engine.close
    raise SystemExit(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")


# ---- workloads on one engine -------------------------------------------------------------------------------------
def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def timed_generate(engine: Engine, requests: list[Request]) -> dict[str, Any]:
    started = time.perf_counter()
    results = engine.generate(requests)
    return results_row(engine, results, time.perf_counter() - started)


def results_row(engine: Engine, results: list[Any], seconds: float) -> dict[str, Any]:
    """One measurement of a workload's results: seconds, tokens, tok/s, cached tokens (any failure raises)."""
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise Error(f"{engine.backend}: {len(failed)} of {len(results)} requests failed: {failed[0]}")
    out_tokens = sum(r.usage.completion_tokens for r in results)
    cached = [r.usage.cached_tokens for r in results]
    return {
        "seconds": round(seconds, 3),
        "completion_tokens": out_tokens,
        "tok_s": round(out_tokens / seconds, 2) if seconds else None,
        "prompt_tokens": sum(r.usage.prompt_tokens for r in results),
        "cached_tokens": None if None in cached else sum(cached),
    }  # type: ignore[arg-type]


def decode(engine: Engine, seed: int) -> dict[str, Any]:
    prompt = "Here is a long story about a lighthouse keeper and the ships she watched over the years. Chapter 1.\n"
    return timed_generate(engine, [Request.completion(prompt, max_tokens=64)])


def siblings16(engine: Engine, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    prompts = [
        f"Question {i}: describe the {rng.choice(WORDS)} and the {rng.choice(WORDS)} in one sentence.\nAnswer:"
        for i in range(16)
    ]
    return timed_generate(engine, [Request.completion(p, max_tokens=32) for p in prompts])


def cold_chunk8(engine: Engine, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    chunk = text(rng, 1_400)  # ~1,500 tokens with the embedded tokenizer; new words every call: cold
    questions = [f"\n\nQuestion: how often does the word '{w}' appear above?\nAnswer:" for w in rng.sample(WORDS, 8)]
    return timed_generate(engine, [Request.completion("Chunk:\n" + chunk + q, max_tokens=16) for q in questions])


def cold_starts8(engine: Engine, seed: int) -> dict[str, Any]:
    """The first turns of 8 concurrent runs: 8 calls of one request each, 0.2 s apart, over one new
    ~1,500-token prefix (a system prompt no slot holds yet) with a question of their own."""
    rng = random.Random(seed)
    prefix = "System:\n" + text(rng, 1_400)
    requests = [
        Request.completion(f"{prefix}\n\nRun {i}: how often does '{w}' appear?\nAnswer:", max_tokens=16)
        for i, w in enumerate(rng.sample(WORDS, 8))
    ]

    def one(i: int) -> Any:
        time.sleep(0.2 * i)
        return engine.generate([requests[i]])[0]

    started = time.perf_counter()
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(one, range(len(requests))))
    return results_row(engine, results, time.perf_counter() - started)


# ---- whole runs on a setup (root engine, sub engine) ---------------------------------------------------------------
def demo(root: Engine, sub: Engine, seed: int) -> dict[str, Any]:
    from rlm_local.bench.niah import make_needle_task
    from rlm_local.rlm import RLM

    task = make_needle_task(length=200_000, depth=0.63, seed=7)  # the same task as `rlm-local run --demo`
    with RLM(engine=root, sub_engine=sub, max_iterations=20) as rlm:
        started = time.perf_counter()
        result = rlm.completion(task.context, root_prompt=task.question)
        seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "correct": task.is_correct(result.response),
        "stopped": result.stopped_reason,
        "iterations": result.iterations,
    }


def demo_cli(setup: str, seed: int) -> dict[str, Any]:
    root, _, sub = setup.partition("+")
    cmd = [sys.executable, "-m", "rlm_local.cli", "run", "--demo", "--quiet", "--backend", root]
    if sub:
        cmd += ["--sub-backend", sub]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise Error(f"rlm-local run --demo exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return {"seconds": round(seconds, 3), "correct": proc.returncode == 0}


def sweep8(root: Engine, sub: Engine, seed: int) -> dict[str, Any]:
    from rlm_local.bench.items import family
    from rlm_local.rlm import RLM

    niah = family("niah")
    items = niah.generate(1_000, 8, seed=0)  # the same items every time: a sweep repeated
    with RLM(engine=root, sub_engine=sub, max_iterations=6, scheduler_kwargs={"memo": False}) as rlm:
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda it: rlm.completion(it.context, root_prompt=it.question).response, items))
        seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "mean_score": round(statistics.mean(niah.score(it, a) for it, a in zip(items, answers)), 3),
    }


ENGINE_WORKLOADS: dict[str, Callable[[Engine, int], dict[str, Any]]] = {
    "decode": decode,
    "siblings16": siblings16,
    "cold_chunk8": cold_chunk8,
    "cold_starts8": cold_starts8,
    "rlm_siblings16": lambda engine, seed: pair.rlm_siblings(engine, 16),
    "rlm_siblings64": lambda engine, seed: pair.rlm_siblings(engine, 64),
    "ceiling16": lambda engine, seed: pair.ceiling(engine, 16),
    "ceiling64": lambda engine, seed: pair.ceiling(engine, 64),
    "sweep": lambda engine, seed: pair.sweep(engine),
    "cancel": lambda engine, seed: pair.cancel(engine),
}
SETUP_WORKLOADS: dict[str, Callable[[Engine, Engine, int], dict[str, Any]]] = {"demo": demo, "sweep8": sweep8}


# ---- the run -----------------------------------------------------------------------------------------------------
def available(
    names: list[str], threads: int, batch_threads: int | None, console: Console, model: str | None = None
) -> tuple[dict[str, Engine], list[Callable[[], None]], dict]:
    engines: dict[str, Engine] = {}
    closers: list[Callable[[], None]] = []
    loads: dict[str, Any] = {}
    for name in names:
        started = time.perf_counter()
        try:
            engine, close = make_named_engine(name, threads, batch_threads, model)
        except (Error, ImportError) as exc:
            loads[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            console.print(f"[yellow]{name}: not available here ({' '.join(str(exc).split())[:200]})[/yellow]")
            continue
        engines[name], loads[name] = engine, {"load_s": round(time.perf_counter() - started, 1)}
        for knob in ("threads", "batch_threads", "n_parallel"):
            if hasattr(engine, knob):
                loads[name][knob] = getattr(engine, knob)
        closers.append(close)
        console.print(f"{name}: loaded in {loads[name]['load_s']} s")
    return engines, closers, loads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--setups", default=",".join(SETUPS), help="whole-run setups: ENGINE or ROOT+SUB")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per in-process engine (1 on 2 cores: engines.md)")
    ap.add_argument("--reference", default="transformers", help="ratios are against this engine / setup")
    ap.add_argument(
        "--out",
        default=None,
        help="JSON path (default: scripts/results/bench_engines.json; bench_engines_quick.json with --quick)",
    )
    ap.add_argument("--batch-threads", type=int, default=None, help="llama.cpp batch threads (default: free cores)")
    ap.add_argument("--model", default=None, help="packaged model for the llama.cpp engines (e.g. quality)")
    ap.add_argument("--quick", action="store_true", help="llama.cpp vs llama-server, one repeat: " + QUICK["workloads"])
    args = ap.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    # the quick record must not overwrite the full one (README's engine tables come from both)
    args.out = args.out or f"scripts/results/bench_engines{'_quick' if args.quick else ''}.json"
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=160)
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    setups = [s for s in args.setups.split(",") if s]
    listed = [e for e in args.engines.split(",") if e]
    whole_runs = any(w in SETUP_WORKLOADS for w in workloads)
    wanted = list(dict.fromkeys(listed + ([p for s in setups for p in s.split("+")] if whole_runs else [])))
    if args.model and set(wanted) - {"llamacpp", "llama-server"}:
        raise SystemExit("--model applies to the llama.cpp engines only (--engines llamacpp,llama-server)")
    engines, closers, loads = available(wanted, args.threads, args.batch_threads, console, args.model)
    if whole_runs:  # demo_cli alone loads nothing here: each of its runs is a new process
        setups = [s for s in setups if all(p in engines for p in s.split("+"))]
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(args.repeats):
            for w in workloads:
                targets = (
                    [(e, e) for e in listed if e in engines] if w in ENGINE_WORKLOADS else [(s, s) for s in setups]
                )
                if w in LLAMA_ONLY:
                    targets = [(e, e) for e, _ in targets if hasattr(engines[e], "_server")]
                shift = rep % max(1, len(targets))
                for label, what in targets[shift:] + targets[:shift]:  # rotate the order between repeats
                    seed = (
                        1000 * rep + zlib.crc32(label.encode()) % 997
                    )  # a new chunk for every (repeat, engine): always cold
                    try:
                        if w in ENGINE_WORKLOADS:
                            row = ENGINE_WORKLOADS[w](engines[what], seed)
                        elif w == "demo_cli":  # its own process: nothing loaded here is used
                            row = demo_cli(what, seed)
                        else:
                            root, _, sub = what.partition("+")
                            row = SETUP_WORKLOADS[w](engines[root], engines[sub or root], seed)
                    except Exception as exc:  # one engine failing a workload must not lose the others' rows
                        row = {"error": f"{type(exc).__name__}: {exc}"}
                    runs.append({"repeat": rep, "workload": w, "target": label, "load": os.getloadavg()[0], **row})
                    console.print(
                        f"  repeat {rep} {w:<14} {label:<24} "
                        + (
                            f"{row['seconds']:.2f} s {pair.describe(row)}"
                            if "seconds" in row
                            else row.get("error", "")[:160]
                        )
                    )
    finally:
        for close in closers:
            try:
                close()
            except Exception as exc:  # best effort at the end of a benchmark
                log.warning("close failed: %s", exc)
    summary = summarise(runs, args.reference)
    print_table(console, summary, args.reference)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                    "python": sys.version.split()[0],
                },
                "args": vars(args),
                "load_average": os.getloadavg(),
                "cpus": os.cpu_count(),
                "loads": loads,
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    out.with_suffix(".md").write_text(markdown_table(summary, args.reference))
    console.print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def summarise(runs: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Median seconds (and tokens/s where it applies) per (workload, target), with the ratio to the reference."""
    rows: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r["workload"], r["target"]) for r in runs))
    for w, t in keys:
        ok = [r for r in runs if r["workload"] == w and r["target"] == t and "seconds" in r]
        errors = [r["error"] for r in runs if r["workload"] == w and r["target"] == t and "error" in r]
        row: dict[str, Any] = {"workload": w, "target": t, "n": len(ok), "errors": len(errors)}
        if ok:
            row["median_s"] = round(statistics.median(r["seconds"] for r in ok), 3)
            if all(r.get("tok_s") for r in ok):
                row["median_tok_s"] = round(statistics.median(r["tok_s"] for r in ok), 2)
            for extra in ("correct", "mean_score", "cached_tokens", "load"):
                if extra in ok[0]:
                    row[extra] = [r.get(extra) for r in ok]
            for pair_key in PAIR_KEYS:  # the two sides of a paired workload, and their ratio
                if all(isinstance(r.get(pair_key), (int, float)) for r in ok):
                    row[f"median_{pair_key}"] = round(statistics.median(r[pair_key] for r in ok), 3)
        if errors:
            row["first_error"] = errors[0][:300]
        rows.append(row)
    for row in rows:
        ref = next(
            (r for r in rows if r["workload"] == row["workload"] and r["target"] == reference and "median_s" in r), None
        )
        if ref and "median_s" in row:
            row["speedup_vs_reference"] = round(ref["median_s"] / row["median_s"], 2)
    return rows


def print_table(console: Console, rows: list[dict[str, Any]], reference: str) -> None:
    table = Table(title=f"engines on this machine (median over repeats; speedup = {reference} time / this time)")
    for col in ("workload", "engine / setup", "median s", "tok/s", f"x vs {reference}", "notes"):
        table.add_column(col, justify="left" if col in ("workload", "engine / setup", "notes") else "right")
    for r in rows:
        notes = []
        if "correct" in r:
            notes.append(f"correct {sum(bool(c) for c in r['correct'])}/{len(r['correct'])}")
        if "mean_score" in r:
            notes.append(f"score {r['mean_score']}")
        if "cached_tokens" in r and r["cached_tokens"] and r["cached_tokens"][0] is not None:
            notes.append(f"cached {r['cached_tokens']}")
        if r.get("errors"):
            notes.append(f"{r['errors']} failed: {r.get('first_error', '')[:80]}")
        notes += pair_notes(r)
        table.add_row(
            r["workload"],
            r["target"],
            f"{r['median_s']:.2f}" if "median_s" in r else "-",
            f"{r['median_tok_s']:.1f}" if "median_tok_s" in r else "-",
            f"{r['speedup_vs_reference']:.2f}" if "speedup_vs_reference" in r else "-",
            "; ".join(notes),
        )
    console.print(table)


def pair_notes(r: dict[str, Any]) -> list[str]:
    """The two sides of a paired workload and their ratio, as table notes."""
    out = []
    if "median_one_by_one_s" in r:
        out.append(f"one by one {r['median_one_by_one_s']:.2f} s, batched {r['median_batched_s']:.2f} s")
    if "median_k1_s" in r:
        out.append(f"K=1 {r['median_k1_s']:.1f} s, K=8 {r['median_k8_s']:.1f} s")
    if "median_ratio" in r:
        out.append(f"**{r['median_ratio']:.2f}x**")
    if "median_token_ratio" in r:
        out.append(f"{r['median_token_ratio']:.2f}x in tokens/s")
    if "median_prompt_cpu_s" in r:
        out.append(
            f"CPU after a cancel: prompt {r['median_prompt_cpu_s']:.2f} s, decode {r['median_decode_cpu_s']:.2f} s"
        )
    return out


def markdown_table(rows: list[dict[str, Any]], reference: str) -> str:
    """README's engine table: one row per workload, one column per engine, medians with ratios."""
    targets = list(dict.fromkeys(r["target"] for r in rows))
    lines = ["| workload | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for w in dict.fromkeys(r["workload"] for r in rows):
        cells = []
        for t in targets:
            r = next((x for x in rows if x["workload"] == w and x["target"] == t), None)
            if r is None or "median_s" not in r:
                cells.append("-" if r is None else f"failed: {r.get('first_error', '')[:40]}")
                continue
            main = (
                f"{r['median_tok_s']:.1f} tok/s" if "median_tok_s" in r and w == "decode" else f"{r['median_s']:.2f} s"
            )
            if w == "cancel":
                main = f"{r['median_prompt_cpu_s']:.2f} / {r['median_decode_cpu_s']:.2f} s CPU"
            elif "median_ratio" in r:
                main = "; ".join(pair_notes({k: v for k, v in r.items() if k != "median_prompt_cpu_s"}))
            cells.append(main)
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # vLLM's engine core is a spawned process: the guard is required
    sys.exit(main())
