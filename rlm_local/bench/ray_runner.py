"""``rlm-local bench ... --ray [ADDRESS]``: the same sweep, with items spread over a Ray cluster.

Each Ray actor is one worker: it makes its own engine from the sweep's :class:`EngineSpec` (with
``--backend openai`` and several ``--base-url``, worker i gets server i of that pool, so each server is
driven by one worker) and runs up to ``concurrency`` items at once through that engine's one scheduler.
Items travel as (length, index): workers regenerate them (generators are deterministic), so contexts
never cross the network. Every finished item comes back on its own and its rows are appended by the
driver at once (the local runner's writer: flushed and fsynced), so an interrupted sweep loses no
finished row and ``--resume`` works exactly as without Ray. Ray is the ``ray`` extra.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engines import Engine
from .items import BenchError, item_id
from .methods import Methods
from .oracle import Oracle
from .results import row_key
from .runner import RowWriter, Sweep, prepare_out, run_items

Row = dict[str, Any]


class Worker:
    """One Ray actor: an engine, the methods on it, and items run on request (threaded: ``max_concurrency``
    calls at once share the engine's scheduler)."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.oracle: Oracle | None = None
        engine: Engine
        if sweep.engine.backend == "oracle":
            from .oracle import oracle_engine

            engine, self.oracle = oracle_engine()
        else:
            engine = sweep.engine.make()
        self.methods = Methods(
            engine,
            sweep.methods,
            max_iterations=sweep.max_iterations,
            max_timeout=sweep.max_timeout,
            window=sweep.window,
            levers=sweep.levers,
        )
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, length: int, index: int, methods: list[str]) -> list[tuple[Row, list[Row]]]:
        """The finished rows of one item, each with its trajectory's events."""
        item = self.sweep.items(length, [index])[0]
        if self.oracle is not None:
            self.oracle.add([item])
        rows: list[tuple[Row, list[Row]]] = []
        run_items(
            self.methods,
            [item],
            methods,
            1,
            lambda row, events: rows.append((row, events)),
            backend=self.sweep.engine.backend,
        )
        for row, _ in rows:
            row["worker"] = self.name
            row["concurrency"] = self.sweep.concurrency
        return rows

    def close(self) -> None:
        engine = self.methods.engine
        self.methods.close()
        engine.close()


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BenchError("--ray needs Ray: pip install 'rlm-local[ray]'") from None
    return ray


def run_sweep_on_ray(
    sweep: Sweep,
    address: str | None = None,
    workers: int | None = None,
    on_row: Callable[[Row], None] = lambda row: None,
    on_total: Callable[[int], None] = lambda n: None,
) -> Path:
    """Run ``sweep`` on Ray (``address`` None: the already initialised cluster, or a new local one).
    ``workers`` defaults to one per ``--base-url`` (else one). Returns the rows file."""
    ray = _ray()
    sweep.check()
    path, done, _ = prepare_out(sweep)
    if not ray.is_initialized():
        # A local cluster's workers import this very rlm_local (a source checkout need not be installed).
        here = str(Path(__file__).resolve().parents[2])
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}}
        try:
            ray.init(
                address=address,
                runtime_env=env if address is None else None,
                include_dashboard=False,
                log_to_driver=False,
            )
        except Exception as exc:  # ConnectionError and Ray's own errors for a wrong address
            raise BenchError(f"cannot reach the Ray cluster at {address or 'a new local cluster'}: {exc}") from None
    pool = sweep.engine.base_urls or []
    n_workers = workers or max(1, len(pool))
    jobs = []
    for length in sweep.lengths:
        for index in range(sweep.n):
            key_id = item_id(sweep.family, length, index, sweep.seed)
            todo = [m for m in sweep.methods if row_key(key_id, m) not in done]
            if todo:
                jobs.append((length, index, todo))
    on_total(sum(len(j[2]) for j in jobs))
    remote = ray.remote(Worker)
    actors = []
    for i in range(min(n_workers, max(1, len(jobs)))):
        spec = dataclasses.replace(sweep.engine, base_urls=[pool[i % len(pool)]] if pool else [])
        actors.append(
            remote.options(max_concurrency=sweep.concurrency, num_cpus=0).remote(
                dataclasses.replace(sweep, engine=spec)
            )
        )
    writer = RowWriter(path)
    pending: dict[Any, int] = {}
    try:
        queue = list(jobs)
        for _slot in range(sweep.concurrency):
            for a, actor in enumerate(actors):
                if queue:
                    length, index, todo = queue.pop(0)
                    pending[actor.run.remote(length, index, todo)] = a
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            a = pending.pop(ready[0])
            for row, events in ray.get(ready[0]):
                writer.write_trajectory(row["item_id"], row["method"], events)
                writer.write(row)
                on_row(row)
            if queue:
                length, index, todo = queue.pop(0)
                pending[actors[a].run.remote(length, index, todo)] = a
    finally:
        writer.close()
        for actor in actors:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception:  # a worker that died is gone anyway
                pass
            ray.kill(actor)
    return path
