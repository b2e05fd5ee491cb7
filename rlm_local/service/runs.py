"""Runs of the service: each chat completion on an RLM model is one ``RLM.completion`` in a worker thread,
recorded as it happens (events in memory for streaming and the live viewer, the trajectory JSONL and a
meta file under ``data_dir/runs/<owner>/``), cancellable, and counted against its key's limits until
everything it started has ended (a session's snapshot included).

Memory is bounded: the ``max_run_records`` most recently finished runs stay in memory, older ones are read
back from their files when asked for. A run that was going when the server died is ``interrupted``,
in the listing and by id alike (its meta file is rewritten at the next start)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engines import Engine, make_engine
from ..errors import logger as _root_logger
from ..rlm import RLM, RLMResult
from ..runlog.events import Event
from ..runlog.trajectory import read_trajectory
from .auth import Access, Caller
from .config import RLMConfig, ServiceConfig
from .files import _safe
from .schemas import ApiError

logger = _root_logger.getChild("service.runs")

EVENT_FIELD_CHARS = 4000  # text fields of events kept in memory and streamed


@dataclass
class RunRecord:
    id: str
    owner: str
    model: str
    question: str | None
    session: str | None = None
    status: str = "running"  # running, done, cancelled, error, interrupted (the server died meanwhile)
    created: float = field(default_factory=time.time)
    deadline: float | None = None  # time.monotonic() at which the run's time budget ends
    stop_cause: str | None = None  # "shutdown" when the server stopped it; "client" when cancelled
    events: list[dict[str, Any]] = field(default_factory=list)
    result: RLMResult | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    listeners: list[Callable[[dict[str, Any] | None], None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    path: Path | None = None
    context_sha256: str = ""  # traces carry this, never the context
    saved: dict[str, Any] | None = None  # a run read back from disk: its meta file

    def meta(self) -> dict[str, Any]:
        r = self.result
        if r is None and self.saved is not None:
            return {**self.saved, "status": self.status, "events": len(self.events)}
        return {
            "id": self.id,
            "model": self.model,
            "question": self.question,
            "session": self.session,
            "status": self.status,
            "created": self.created,
            "error": self.error,
            "stop_cause": self.stop_cause,
            "answer": r.response if r else None,
            "stopped_reason": r.stopped_reason if r else None,
            "seconds": round(r.execution_time, 3) if r else None,
            "events": len(self.events),
        }

    def subscribe(self, fn: Callable[[dict[str, Any] | None], None]) -> list[dict[str, Any]]:
        """Events so far; ``fn`` gets every later one, then None when the run ends."""
        with self.lock:
            self.listeners.append(fn)
            return list(self.events)

    def unsubscribe(self, fn: Callable[..., None]) -> None:
        with self.lock:
            if fn in self.listeners:
                self.listeners.remove(fn)


class Engines:
    """The engines of every configured RLM, made once and shared (their schedulers are process-wide)."""

    def __init__(self) -> None:
        self._made: dict[tuple, Engine] = {}
        self._lock = threading.Lock()

    def for_config(self, cfg: RLMConfig) -> tuple[Engine, Engine]:
        root = cfg.engine or self._get(cfg.backend, cfg.model, cfg.base_url, cfg.threads)
        if cfg.sub_engine is not None:
            return root, cfg.sub_engine
        if cfg.sub_backend is None and cfg.sub_model is None:
            return root, root
        backend = cfg.sub_backend or cfg.backend
        urls = cfg.sub_base_url or (cfg.base_url if backend == cfg.backend else None)
        return root, self._get(backend, cfg.sub_model, urls, cfg.threads)

    def _get(self, backend: str, model: str | None, base_url: Any, threads: int | None) -> Engine:
        key = (backend, model, json.dumps(base_url), threads)
        with self._lock:
            if key not in self._made:
                kwargs: dict[str, Any] = {"model_name": model}
                if base_url:
                    kwargs["base_url"] = base_url
                if threads:
                    kwargs["threads"] = threads
                self._made[key] = make_engine(backend, **kwargs)
            return self._made[key]

    def all(self) -> list[Engine]:
        return list(self._made.values())

    def close(self) -> None:
        for engine in self._made.values():
            engine.close()


class RunManager:
    def __init__(
        self,
        config: ServiceConfig,
        access: Access,
        engines: Engines,
        on_finish: list[Callable[[RunRecord], None]] | None = None,
        on_refuse: Callable[[str], None] | None = None,
    ) -> None:
        self.config, self.access, self.engines = config, access, engines
        self.on_refuse = on_refuse or (lambda reason: None)
        self.root = config.data_dir / "runs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.pool = ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rlm-run")
        self.on_finish = list(on_finish or [])
        self._runs: dict[str, RunRecord] = {}  # going runs and the latest finished ones
        self._finished: OrderedDict[str, None] = OrderedDict()  # finished ids in _runs, oldest first
        self._rlms: dict[str, RLM] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._mark_interrupted()

    def start(
        self,
        caller: Caller,
        cfg: RLMConfig,
        context: Any,
        question: str | None,
        *,
        session: str | None = None,
        sandbox_provider: Callable[..., Any] | None = None,
        before_end: Callable[[RunRecord], None] | None = None,
        on_done: Callable[[RunRecord], None] | None = None,
        title: str | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> RunRecord:
        """Start a run (the caller's limits are checked first: ApiError(429)); returns at once. ``title``:
        the question as the user asked it, for listings (a session's question carries its history).
        ``before_end(record)`` runs after the completion while the run still counts against its key (a
        session's snapshot, bounded by ``record.deadline``); ``on_done(record)`` after that."""
        try:
            if self.stopping.is_set():
                raise ApiError(
                    503, "the server is shutting down", "server_error", code="server_shutdown", retry_after=5
                )
            self.access.start_run(caller)
        except ApiError as exc:
            self.on_refuse(exc.code or str(exc.status))
            raise
        run_id = uuid.uuid4().hex[:12]
        folder = self.root / _safe(caller.owner)
        folder.mkdir(parents=True, exist_ok=True)
        record = RunRecord(
            id=run_id,
            owner=caller.owner,
            model=cfg.name,
            question=title or question,
            session=session,
            path=folder / f"{run_id}.jsonl",
            context_sha256=hashlib.sha256(json.dumps(context).encode()).hexdigest(),
        )
        if (limit := cfg.budgets.get("max_timeout")) is not None:
            record.deadline = time.monotonic() + float(limit)
        try:
            engine, sub_engine = self.engines.for_config(cfg)
            rlm = RLM(
                engine=engine,
                sub_engine=sub_engine,
                trajectory_path=record.path,
                on_event=lambda ev: self._event(record, ev),
                raise_on_limit=False,  # a budget stop is a result with its stopped_reason, shown to the client
                **cfg.budgets,
            )
        except BaseException:
            self.access.end_run(caller, 0)
            raise
        with self._lock:
            self._runs[run_id] = record
            self._rlms[run_id] = rlm
        self._write_meta(record)
        hooks = (sandbox_provider, before_end, on_done)
        self.pool.submit(self._work, record, rlm, caller, context, question, hooks, response_format)
        return record

    def _work(
        self,
        record: RunRecord,
        rlm: RLM,
        caller: Caller,
        context: Any,
        question: str | None,
        hooks: tuple[Any, Any, Any],
        response_format: dict[str, Any] | None = None,
    ) -> None:
        sandbox_provider, before_end, on_done = hooks
        tokens = 0
        try:
            result = rlm.completion(
                context, question, run_id=record.id, sandbox_provider=sandbox_provider, response_format=response_format
            )
            record.result = result
            record.status = "cancelled" if result.stopped_reason == "cancelled" else "done"
            tokens = result.usage_summary.total.total_tokens
        except Exception as exc:  # reported to the client; the server keeps serving
            record.status, record.error = "error", f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        finally:
            rlm.close()
            for hook in (before_end, on_done):
                _quietly(hook, record)  # a session's bookkeeping must not hide the run's end
            with self._lock:
                self._rlms.pop(record.id, None)
            self.access.end_run(caller, tokens)
            self._write_meta(record)
            for fn in self.on_finish:
                _quietly(fn, record)
            record.done.set()
            with record.lock:
                listeners = list(record.listeners)
            for listener in listeners:
                listener(None)
            self._retire(record)

    def _retire(self, record: RunRecord) -> None:
        """Keep the latest ``max_run_records`` finished runs in memory; older ones live on disk only."""
        with self._lock:
            self._finished[record.id] = None
            while len(self._finished) > self.config.max_run_records:
                old, _ = self._finished.popitem(last=False)
                self._runs.pop(old, None)

    def _event(self, record: RunRecord, event: Event) -> None:
        data = event.to_dict(EVENT_FIELD_CHARS)
        with record.lock:
            record.events.append(data)
            listeners = list(record.listeners)
        for fn in listeners:
            fn(data)

    def cancel(self, run_id: str, cause: str = "client") -> bool:
        """Stop a going run: its budget ends it at its next step and its queued model calls are dropped
        (``RLM.cancel``, which reaches the engines through the schedulers)."""
        with self._lock:
            rlm, record = self._rlms.get(run_id), self._runs.get(run_id)
        if rlm is None or record is None:
            return False
        record.stop_cause = record.stop_cause or cause
        return rlm.cancel(run_id)

    def shutdown(self) -> None:
        """The server is stopping: refuse new runs and stop the going ones (their clients are told)."""
        self.stopping.set()
        with self._lock:
            ids = list(self._rlms)
        for run_id in ids:
            self.cancel(run_id, cause="shutdown")

    def get(self, owner: str, run_id: str) -> RunRecord | None:
        with self._lock:
            record = self._runs.get(run_id)
        if record is not None:
            return record if record.owner == owner else None
        return self._load(owner, run_id)

    def list(self, owner: str) -> list[dict[str, Any]]:
        folder = self.root / _safe(owner)
        metas = []
        for p in folder.glob("*.meta.json") if folder.is_dir() else []:
            try:
                meta = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            with self._lock:
                live = meta.get("id") in self._runs
            if meta.get("status") == "running" and not live:  # written by a server that died
                meta["status"] = "interrupted"
            metas.append(meta)
        return sorted(metas, key=lambda m: m["created"], reverse=True)

    def _mark_interrupted(self) -> None:
        """Runs an earlier server left "running" (it was killed) are interrupted: say so on disk."""
        for path in self.root.glob("*/*.meta.json"):
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
                if meta.get("status") == "running":
                    meta["status"] = "interrupted"
                    _write_json(path, meta)
            except (OSError, ValueError):
                continue

    def _load(self, owner: str, run_id: str) -> RunRecord | None:
        """A finished run from an earlier server: its meta file and trajectory (read-only)."""
        if not run_id.isalnum():
            return None
        folder = self.root / _safe(owner)
        meta_path = folder / f"{run_id}.meta.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        path = folder / f"{run_id}.jsonl"
        record = RunRecord(
            id=run_id,
            owner=owner,
            model=meta["model"],
            question=meta.get("question"),
            session=meta.get("session"),
            status=meta["status"] if meta["status"] != "running" else "interrupted",
            created=meta["created"],
            error=meta.get("error"),
            path=path,
            events=read_trajectory(path) if path.exists() else [],
            saved=meta,
        )
        record.done.set()
        return record

    def _write_meta(self, record: RunRecord) -> None:
        assert record.path is not None  # start() gives every run it writes a path
        _write_json(record.path.with_suffix(".meta.json"), record.meta())

    def active(self) -> int:
        with self._lock:
            return len(self._rlms)

    def close(self) -> None:
        self.shutdown()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


def _quietly(fn: Callable[[RunRecord], None] | None, record: RunRecord) -> None:
    if fn is None:
        return
    try:
        fn(record)
    except Exception:  # logged, never raised: the run's end must be reported whatever a hook does
        logger.exception("hook %s failed at the end of run %s", getattr(fn, "__name__", fn), record.id)
