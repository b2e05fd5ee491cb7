"""Sweeps: items x methods on one engine, K items at a time, every finished row appended to a JSONL file.

Guarantees:
- a row is written (one ``write``, then flush and fsync) as soon as its item finishes, so an interrupted
  sweep loses no finished row; ``resume`` skips every (item, method, model) already in the file;
- K concurrent items share the engine's one scheduler (RLM's process-wide registry), so sub-calls and root
  turns of different items batch together;
- items are regenerated from (family, length, index, seed): nothing but the rows is stored.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import defaults
from ..engines import DEFAULT_BACKEND, Engine, Request, make_engine
from ..loop.prompts import describe_context
from .items import BenchError, Item, family
from .methods import Answer, Methods, check_methods, peak_rss_mb
from .oracle import oracle_engine
from .results import ROWS_FILE, TRAJECTORIES_DIR, load_rows, row_key

logger = logging.getLogger("rlm_local.bench")


@dataclass
class EngineSpec:
    """How to make the engine of a sweep (plain data, so a Ray worker can make its own)."""

    backend: str = DEFAULT_BACKEND
    model: str | None = None
    base_urls: list[str] = field(default_factory=list)
    threads: int | None = None
    # llama.cpp: at least this many slots (the sweep's concurrency), so that K runs at once each keep their
    # conversation in a slot instead of evicting each other's between turns.
    min_slots: int | None = None

    def make(self, items: Iterable[Item] = ()) -> Engine:
        """The engine; ``oracle`` is the scripted oracle over ``items``. Unknown backends and unreachable
        servers fail here with an rlm_local.Error."""
        if self.backend == "oracle":
            return oracle_engine(items)[0]
        kwargs: dict[str, Any] = {"model_name": self.model}
        if self.backend == "openai":
            if not self.base_urls:
                raise BenchError("the openai backend needs --base-url")
            kwargs["base_url"] = self.base_urls if len(self.base_urls) > 1 else self.base_urls[0]
        if self.backend in ("transformers", "llamacpp") and self.threads:
            kwargs["threads"] = self.threads
        if self.backend == "llamacpp" and self.min_slots:
            kwargs["min_parallel"] = self.min_slots
        engine = make_engine(self.backend, **kwargs)
        try:
            probe(engine)
        except BaseException:
            engine.close()
            raise
        return engine


def probe(engine: Engine) -> None:
    """One tiny request, so that an unreachable or broken engine stops the sweep before it writes a row of
    errors for every item."""
    result = engine.generate([Request.completion("Hello", max_tokens=1)])[0]
    if not result.ok:
        raise BenchError(f"the {engine.backend} engine cannot serve: {' '.join(str(result.error).split())[:300]}")


@dataclass
class Sweep:
    """One ``rlm-local bench`` invocation: what to run and where rows go."""

    family: str
    lengths: list[int]
    n: int = 3
    methods: list[str] = field(default_factory=lambda: ["base", "rlm-nosub", "rlm", "summary"])
    seed: int = 0
    engine: EngineSpec = field(default_factory=EngineSpec)
    concurrency: int = 1
    out: Path = Path("bench/results")
    resume: bool = False
    max_iterations: int = defaults.BENCH_MAX_ITERATIONS
    max_timeout: float | None = None
    window: int | None = None
    source: str | None = None  # codeqa's source directory
    levers: dict[str, bool] = field(default_factory=dict)  # the RLM methods' lever overrides (--lever)

    def check(self) -> None:
        family(self.family)
        check_methods(self.methods)
        if self.n < 1 or self.concurrency < 1:
            raise BenchError("--n and --concurrency must be at least 1")
        if not self.lengths:
            raise BenchError("give at least one length")

    def items(self, length: int, indices: Iterable[int] | None = None) -> list[Item]:
        fam = family(self.family)
        wanted = range(self.n) if indices is None else indices
        return [fam.make_item(length, i, self.seed, source=self.source) for i in wanted]


class RowWriter:
    """Appends rows to the results file: one write per row, flushed and fsynced, under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def write_trajectory(self, item_id: str, method: str, events: list[dict[str, Any]]) -> None:
        """An RLM row's events as gzipped JSONL beside the rows (``trajectories/ITEM.METHOD.jsonl.gz``), written
        before its row so a row on disk always has its trajectory."""
        if not events:
            return
        folder = self.path.parent / TRAJECTORIES_DIR
        folder.mkdir(exist_ok=True)
        data = "".join(json.dumps(e, ensure_ascii=False, default=str) + "\n" for e in events)
        tmp = folder / f".{item_id}.{method}.tmp"
        tmp.write_bytes(gzip.compress(data.encode("utf-8", "backslashreplace"), mtime=0))
        os.replace(tmp, folder / f"{item_id}.{method}.jsonl.gz")

    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, default=str) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def make_row(
    item: Item, method: str, answer: Answer, model: str, backend: str, concurrency: int, context_tokens: int
) -> dict[str, Any]:
    score = family(item.family).score(item, answer.answer)
    fields = asdict(answer)
    fields.pop("trajectory")
    row = {
        **item.record(),
        "method": method,
        "model": model,
        "backend": backend,
        "concurrency": concurrency,
        "context_tokens": context_tokens,
        "score": round(score, 6),
        **fields,
        "peak_rss_mb": peak_rss_mb(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    row["seconds"] = round(row["seconds"], 3)
    return row


def run_items(
    methods: Methods,
    items: list[Item],
    names: list[str],
    concurrency: int,
    on_row: Callable[[dict[str, Any], list[dict[str, Any]]], None],
    skip: Set[tuple[str, str]] = frozenset(),
    backend: str = "",
) -> int:
    """Run every (item, method) not in ``skip`` with ``concurrency`` workers; ``on_row`` gets each finished
    row and its trajectory (from the worker thread). Returns how many ran."""
    model = methods.engine.model_name or backend
    tokens = {it.item_id: describe_context(it.context, methods.engine.count_tokens).total_tokens for it in items}
    jobs = [(it, m) for it in items for m in names if row_key(it.item_id, m) not in skip]

    def one(job: tuple[Item, str]) -> None:
        item, method = job
        answer = methods.run(method, item)
        on_row(make_row(item, method, answer, model, backend, concurrency, tokens[item.item_id]), answer.trajectory)

    if concurrency == 1:
        for job in jobs:
            one(job)
    else:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="bench") as pool:
            for future in [pool.submit(one, job) for job in jobs]:
                future.result()
    return len(jobs)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def prepare_out(sweep: Sweep) -> tuple[Path, set[tuple[str, str]], set[str]]:
    """The rows file, the (item, method) keys already done and the models of those rows; refuses to mix a new
    sweep into old rows without resume."""
    path = sweep.out / ROWS_FILE
    if path.exists() and path.stat().st_size and not sweep.resume:
        raise BenchError(f"{path} already has rows; pass --resume to continue that sweep or choose another --out")
    rows = load_rows(path) if path.exists() else []
    return path, {row_key(r["item_id"], r["method"]) for r in rows}, {r["model"] for r in rows}


def run_sweep(
    sweep: Sweep,
    on_row: Callable[[dict[str, Any]], None] = lambda row: None,
    on_total: Callable[[int], None] = lambda n: None,
) -> Path:
    """Run the sweep locally; returns the rows file. ``on_total`` is told how many rows are still to run."""
    sweep.check()
    path, done, models = prepare_out(sweep)
    by_length = {length: sweep.items(length) for length in sweep.lengths}
    engine = sweep.engine.make(it for items in by_length.values() for it in items)
    model = engine.model_name or sweep.engine.backend
    if models - {model}:
        engine.close()
        raise BenchError(f"{path} holds rows of {', '.join(sorted(models))}, not {model}; use another --out")
    on_total(
        sum(
            1
            for items in by_length.values()
            for it in items
            for m in sweep.methods
            if row_key(it.item_id, m) not in done
        )
    )
    sweep.out.mkdir(parents=True, exist_ok=True)
    (sweep.out / "sweep.json").write_text(json.dumps({"sweep": _jsonable(sweep), "machine": machine()}, indent=2))
    writer = RowWriter(path)

    def record(row: dict[str, Any], events: list[dict[str, Any]]) -> None:
        writer.write_trajectory(row["item_id"], row["method"], events)
        writer.write(row)
        on_row(row)

    try:
        methods = Methods(
            engine,
            sweep.methods,
            max_iterations=sweep.max_iterations,
            max_timeout=sweep.max_timeout,
            window=sweep.window,
            levers=sweep.levers,
        )
        try:
            for items in by_length.values():
                run_items(methods, items, sweep.methods, sweep.concurrency, record, done, sweep.engine.backend)
        finally:
            methods.close()
    finally:
        writer.close()
        engine.close()
    return path


def _jsonable(sweep: Sweep) -> dict[str, Any]:
    data = asdict(sweep)
    data["out"] = str(sweep.out)
    return data
