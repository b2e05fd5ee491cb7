"""One scheduler per engine: every sub-call and root turn of every concurrent run goes through it.

Callers block in ``submit``; one background thread owns the engine (engines are not thread-safe). It
gathers requests for a short window or until ``max_batch``, takes them round-robin across runs (one
queued submission per run per turn, so a run with 1,000 queued requests cannot starve another run's one),
groups what it took by shared prefix of the rendered text, issues the engine call(s) and routes each result
back. By default a gathered batch is one engine call with its prefix groups laid out next to each other:
the transformers engine reuses one KV prefix per group inside a single batched generate, and vLLM and
OpenAI-compatible servers share prefixes inside one call, so splitting would only serialise decoding
(bigger batches decode more tokens a second: scripts/bench_subcalls.py, scripts/results/). ``split_by_prefix=True``
issues one call per prefix group instead, for engines that can reuse only one prefix per call.

Guarantees callers rely on:
- the requests of one ``submit`` (one ``llm_query_batched``) go to the engine in one call when they fit
  ``max_batch``; bigger submissions are cut into ``max_batch`` pieces;
- memo (on by default): identical greedy requests queued, in flight or recently answered run once. The
  caller whose request did the engine work gets the engine's usage; every other gets the same text with
  ``usage.calls == 0`` and zero tokens, so summing usage over callers gives exactly the engine's work;
- requests that never reached the engine (cancelled, refused, closed) fail with ``usage.calls == 0``;
- a submit that times out while the engine already runs its request gets the engine's usage later, through
  ``on_late_usage``: work that was cancelled is still counted, exactly once;
- engines that can stop work at a deadline (``Engine.supports_deadline``) are given the latest deadline
  of the callers waiting on a call, so a timed-out generation does not hold the engine long after;
- engines that can stop a request (``Engine.supports_cancel``) are told to as soon as no caller waits for
  it any more (``cancel(run_id)``, a submit timeout, ``close()``): a cancelled run's turn or sub-call stops
  using the CPU instead of running to its end for nobody.
- a whole-batch engine exception is retried request by request, so only the bad request fails.
- engines that batch continuously inside (``Engine.concurrent_calls > 1``: vLLM's AsyncLLM) get each
  gathered batch as soon as it is taken, up to that many calls in flight, each from its own thread, so a
  new run's request joins the engine's running batch instead of waiting for the previous call to end.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..engines.base import Engine, Request, Result, Usage
from ..errors import input_errors
from ..errors import logger as _root_logger
from .prefix import plan_calls

logger = _root_logger.getChild("scheduler")

_CLOSED_RUNS_KEPT = 1024


@dataclass
class SchedulerStats:
    submitted: int = 0  # requests passed to submit()
    engine_calls: int = 0  # engine.generate calls ("batches issued"), one-by-one retries included
    engine_requests: int = 0  # requests sent to the engine
    memo_hits: int = 0  # requests answered without engine work of their own
    cancelled: int = 0  # requests answered "cancelled" (cancel() or a submit timeout)
    refused: int = 0  # requests refused: queue full, scheduler closed, run closed
    failed: int = 0  # results delivered with an error (cancelled and refused included)
    batch_failures: int = 0  # engine.generate raised for a batch; its requests were retried one by one
    largest_batch: int = 0
    engine_seconds: float = 0.0

    @property
    def mean_batch_size(self) -> float:
        return self.engine_requests / self.engine_calls if self.engine_calls else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean_batch_size"] = round(self.mean_batch_size, 3)
        d["engine_seconds"] = round(self.engine_seconds, 4)
        return d


class _Ticket:
    """One submit() call: a result slot per request and an event set once every slot is filled."""

    __slots__ = ("results", "remaining", "done", "run_id", "cancelled", "deadline", "on_late_usage")

    def __init__(
        self, n: int, run_id: str, deadline: float | None = None, on_late_usage: Callable[[Usage], None] | None = None
    ) -> None:
        self.results: list[Result | None] = [None] * n
        self.remaining = n
        self.done = threading.Event()
        self.run_id = run_id
        self.cancelled: str | None = None  # set while blocked on a full queue
        self.deadline = deadline  # time.monotonic() by which the caller stops waiting, or None
        self.on_late_usage = on_late_usage

    def fill(self, index: int, result: Result) -> bool:
        if self.results[index] is not None:
            return False
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()
        return True


@dataclass(eq=False)
class _Item:
    """One distinct request on its way to the engine; with the memo, several callers may wait on it."""

    request: Request
    key: tuple[object, ...] | None  # memo key (greedy requests with the memo on), else None
    seq: int
    waiters: list[tuple[_Ticket, int]]
    text: str = ""
    late: list[Callable[[Usage], None]] = field(default_factory=list)  # gave up while running; owed usage
    stop: threading.Event = field(default_factory=threading.Event)  # set once nobody waits for it while it runs
    state: str = "queued"  # queued -> taken -> running -> done, or dropped


@dataclass(eq=False)
class _Unit:
    """The new items of one submit(): siblings that go to the engine together."""

    items: deque[_Item]
    splittable: bool  # more than max_batch siblings: may be cut anywhere


def _no_engine_result(message: str) -> Result:
    return Result(text="", finish_reason="error", usage=Usage(calls=0), error=message)


def _copy(result: Result) -> Result:
    return dataclasses.replace(result, usage=dataclasses.replace(result.usage))


def _memo_copy(result: Result) -> Result:
    return Result(text=result.text, finish_reason=result.finish_reason, usage=Usage(calls=0), error=result.error)


class Scheduler:
    """Batches, de-duplicates and fairly orders requests for one engine. Thread-safe; see module doc.

    window_ms: how long to gather after the first queued request; max_batch: most requests per engine call;
    memo/memo_size: share identical greedy requests (LRU of recent answers); max_queue: most queued
    requests before submit blocks, up to queue_timeout seconds (None: forever), then fails;
    max_inflight_per_run: most unanswered requests of one run; min_shared_prefix: characters of rendered
    text that make requests a prefix group; split_by_prefix: one engine call per prefix group (see module
    doc) instead of one call per gathered batch."""

    @input_errors
    def __init__(
        self,
        engine: Engine,
        window_ms: float = 3.0,
        max_batch: int = 32,
        memo: bool = True,
        memo_size: int = 2048,
        max_queue: int = 4096,
        max_inflight_per_run: int | None = None,
        queue_timeout: float | None = 60.0,
        split_by_prefix: bool = False,
        min_shared_prefix: int = 256,
    ) -> None:
        if not isinstance(engine, Engine):
            raise TypeError(f"Scheduler needs an Engine, got {type(engine).__name__}")
        if window_ms < 0:
            raise ValueError(f"window_ms must be >= 0, got {window_ms}")
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(memo_size, int) or memo_size < 0:
            raise ValueError(f"memo_size must be an int >= 0, got {memo_size!r}")
        if max_inflight_per_run is not None and (not isinstance(max_inflight_per_run, int) or max_inflight_per_run < 1):
            raise ValueError(f"max_inflight_per_run must be None or an int >= 1, got {max_inflight_per_run!r}")
        if not isinstance(min_shared_prefix, int) or min_shared_prefix < 1:
            raise ValueError(f"min_shared_prefix must be an int >= 1, got {min_shared_prefix!r}")
        if queue_timeout is not None and queue_timeout < 0:
            raise ValueError(f"queue_timeout must be None or >= 0, got {queue_timeout}")
        self.engine = engine
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self.memo = memo and memo_size > 0
        self.memo_size = memo_size
        self.max_queue = max_queue
        self.max_inflight_per_run = max_inflight_per_run
        self.queue_timeout = queue_timeout
        self.split_by_prefix = split_by_prefix
        self.min_shared_prefix = min_shared_prefix

        self._cond = threading.Condition()
        self._stats = SchedulerStats()
        self._seq = itertools.count()
        self._runs: OrderedDict[str, deque[_Unit]] = OrderedDict()  # round-robin order of runs with work queued
        self._queued = 0  # items waiting in self._runs
        self._live: set[_Item] = set()  # items not yet answered (queued, taken or running)
        self._by_key: dict[tuple[object, ...], _Item] = {}  # live items by memo key
        self._memo: OrderedDict[tuple[object, ...], Result] = OrderedDict()  # recent answers, LRU
        self._pending: dict[str, int] = {}  # unanswered requests per run (max_inflight_per_run)
        self._blocked: set[_Ticket] = set()  # submitters waiting for room in the queue
        self._closed_runs: OrderedDict[str, None] = OrderedDict()
        self._closed = False
        # Calls in flight at once: 1 (the loop thread itself) unless the engine batches continuously inside.
        self._concurrent = max(1, int(getattr(engine, "concurrent_calls", 1) or 1))
        self._slots = threading.BoundedSemaphore(self._concurrent)
        self._calls: set[threading.Thread] = set()
        self._thread = threading.Thread(target=self._loop, name="rlm-scheduler", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- caller side

    def submit(
        self,
        requests: Iterable[Request],
        run_id: str = "default",
        timeout: float | None = None,
        on_late_usage: Callable[[Usage], None] | None = None,
    ) -> list[Result]:
        """Run ``requests`` and return their results in the same order. Blocks; never raises for engine
        trouble: failures come back as results with ``error`` set. ``timeout`` bounds the whole wait; when
        it runs out while the engine already works on a request, ``on_late_usage(usage)`` is called with
        that work's usage once the engine is done (from the scheduler's thread)."""
        requests = list(requests)
        for r in requests:
            if not isinstance(r, Request):
                raise TypeError(f"submit takes Request objects, got {type(r).__name__}")
        if not requests:
            return []
        deadline = None if timeout is None else time.monotonic() + timeout
        ticket = _Ticket(len(requests), run_id, deadline, on_late_usage)
        with self._cond:
            self._stats.submitted += len(requests)
            refusal = self._admit(ticket, len(requests), deadline)
            if refusal is not None:
                for i in range(len(requests)):
                    ticket.fill(i, _no_engine_result(refusal))
                self._stats.refused += len(requests)
                self._stats.failed += len(requests)
                return list(ticket.results)  # type: ignore[arg-type]
            self._enqueue(ticket, requests)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not ticket.done.wait(left):
            with self._cond:
                self._detach(lambda t: t is ticket, f"cancelled: no answer within timeout={timeout}s")
        return list(ticket.results)  # type: ignore[arg-type]

    def cancel(self, run_id: str, reject_new: bool = False) -> int:
        """Drop the run's queued requests (they never reach the engine) and answer all its waiting callers
        with a "cancelled" error now. With ``reject_new`` later submits of this run id are refused (use it
        when a run ends; ids may otherwise be reused). Returns the number of requests cancelled."""
        with self._cond:
            if reject_new:
                self._closed_runs[run_id] = None
                self._closed_runs.move_to_end(run_id)
                while len(self._closed_runs) > _CLOSED_RUNS_KEPT:
                    self._closed_runs.popitem(last=False)
            message = f"cancelled: run {run_id!r} was cancelled"
            for ticket in self._blocked:
                if ticket.run_id == run_id:
                    ticket.cancelled = message
            n = self._detach(lambda t: t.run_id == run_id, message)
            self._cond.notify_all()
            return n

    @property
    def stats(self) -> SchedulerStats:
        with self._cond:
            return dataclasses.replace(self._stats)

    @property
    def queued(self) -> int:
        with self._cond:
            return self._queued

    def close(self, timeout: float | None = 30.0) -> None:
        """Answer every waiting caller with an error, refuse new submits and stop the worker thread (waits
        up to ``timeout`` for an engine call in progress). Idempotent. Does not close the engine."""
        with self._cond:
            if not self._closed:
                self._closed = True
                self._detach(lambda t: True, "scheduler closed before this request was answered", count_cancelled=False)
                self._runs.clear()
                self._queued = 0
                self._memo.clear()
                self._cond.notify_all()
        if self._thread is not threading.current_thread():
            end = None if timeout is None else time.monotonic() + timeout
            self._thread.join(timeout)
            with self._cond:
                calls = list(self._calls)
            for call in calls:
                call.join(None if end is None else max(0.0, end - time.monotonic()))

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- bookkeeping (caller holds the lock)

    def _admit(self, ticket: _Ticket, n: int, deadline: float | None) -> str | None:
        """Wait for room in the queue (backpressure). Returns why the submission is refused, or None."""
        if self.queue_timeout is not None:
            qdeadline = time.monotonic() + self.queue_timeout
            deadline = qdeadline if deadline is None else min(deadline, qdeadline)
        run = ticket.run_id
        self._blocked.add(ticket)
        try:
            while True:
                if self._closed:
                    return "scheduler is closed"
                if run in self._closed_runs:
                    return f"cancelled: run {run!r} was cancelled"
                if ticket.cancelled:
                    return ticket.cancelled
                # A submission bigger than a bound still goes through when nothing else is waiting.
                room = self._queued == 0 or self._queued + n <= self.max_queue
                cap = self.max_inflight_per_run
                pending = self._pending.get(run, 0)
                run_room = cap is None or pending == 0 or pending + n <= cap
                if room and run_room:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    if not room:
                        return f"scheduler queue full ({self._queued} requests queued, max_queue={self.max_queue})"
                    return f"run {run!r} has {pending} requests in flight (max_inflight_per_run={cap})"
                self._cond.wait(left)
        finally:
            self._blocked.discard(ticket)

    def _enqueue(self, ticket: _Ticket, requests: list[Request]) -> None:
        self._pending[ticket.run_id] = self._pending.get(ticket.run_id, 0) + len(requests)
        new: list[_Item] = []
        for i, request in enumerate(requests):
            key = request.key() if self.memo and request.sampling.greedy else None
            if key is not None:
                hit = self._memo.get(key)
                if hit is not None:
                    self._memo.move_to_end(key)
                    self._stats.memo_hits += 1
                    self._fill(ticket, i, _memo_copy(hit))
                    continue
                live = self._by_key.get(key)
                if live is not None:  # identical request queued or running: wait for its answer
                    live.waiters.append((ticket, i))
                    continue
            item = _Item(request=request, key=key, seq=next(self._seq), waiters=[(ticket, i)])
            self._live.add(item)
            if key is not None:
                self._by_key[key] = item
            new.append(item)
        if new:
            unit = _Unit(items=deque(new), splittable=len(new) > self.max_batch)
            self._runs.setdefault(ticket.run_id, deque()).append(unit)
            self._queued += len(new)
            self._cond.notify_all()

    def _fill(self, ticket: _Ticket, index: int, result: Result) -> None:
        if not ticket.fill(index, result):
            return
        left = self._pending.get(ticket.run_id, 1) - 1
        if left > 0:
            self._pending[ticket.run_id] = left
        else:
            self._pending.pop(ticket.run_id, None)
        if result.error is not None:
            self._stats.failed += 1
        if self._blocked:
            self._cond.notify_all()

    def _forget(self, item: _Item, state: str) -> None:
        if item.state == "queued":
            self._queued -= 1
        item.state = state
        self._live.discard(item)
        if item.key is not None and self._by_key.get(item.key) is item:
            del self._by_key[item.key]

    def _detach(self, match: Callable[[_Ticket], bool], message: str, count_cancelled: bool = True) -> int:
        """Answer the waiters whose ticket matches with ``message``; items left without waiters are dropped
        unless the engine already has them (their answer still feeds the memo)."""
        n = 0
        for item in list(self._live):
            kept = []
            for ticket, i in item.waiters:
                if match(ticket):
                    if ticket.results[i] is None:
                        n += 1
                        if item.state == "running" and ticket.on_late_usage is not None:
                            item.late.append(ticket.on_late_usage)
                    self._fill(ticket, i, _no_engine_result(message))
                else:
                    kept.append((ticket, i))
            item.waiters = kept
            if not kept and item.state in ("queued", "taken"):
                self._forget(item, "dropped")
            elif not kept and item.state == "running":
                item.stop.set()  # engines that can stop a request do (Engine.supports_cancel)
        if count_cancelled:
            self._stats.cancelled += n
        else:
            self._stats.refused += n
        return n

    def _take(self) -> list[list[_Item]]:
        """Up to max_batch queued items, one submission per run per round-robin turn."""
        pieces: list[list[_Item]] = []
        size = 0
        progressed = True
        while progressed and size < self.max_batch and self._runs:
            progressed = False
            for run_id in list(self._runs):
                if size >= self.max_batch:
                    break
                units = self._runs[run_id]
                while units:
                    units[0].items = deque(it for it in units[0].items if it.state == "queued")
                    if units[0].items:
                        break
                    units.popleft()
                if not units:
                    del self._runs[run_id]
                    continue
                unit, room = units[0], self.max_batch - size
                if len(unit.items) <= room:
                    piece = list(unit.items)
                    units.popleft()
                elif unit.splittable:
                    piece = [unit.items.popleft() for _ in range(room)]
                else:
                    continue  # siblings stay together: this one waits for the next batch, first in line
                if units:
                    self._runs.move_to_end(run_id)
                else:
                    del self._runs[run_id]
                for item in piece:
                    item.state = "taken"
                self._queued -= len(piece)
                pieces.append(piece)
                size += len(piece)
                progressed = True
        if pieces:
            self._cond.notify_all()  # room in the queue for blocked submitters
        return pieces

    # ---------------------------------------------------------------- worker thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._queued == 0:
                    self._cond.wait()
                if self._closed:
                    return
                if self.window > 0:
                    deadline = time.monotonic() + self.window
                    while not self._closed and 0 < self._queued < self.max_batch:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    if self._closed:
                        return
                pieces = self._take()
            if not pieces:
                continue
            if self._concurrent > 1:
                self._slots.acquire()  # at most concurrent_calls in flight; the queue keeps the rest
                call = threading.Thread(target=self._run_call, args=(pieces,), name="rlm-scheduler-call", daemon=True)
                with self._cond:
                    self._calls.add(call)
                call.start()
            else:
                self._run_call(pieces)

    def _run_call(self, pieces: list[list[_Item]]) -> None:
        try:
            self._run_batch(pieces)
        except Exception as exc:  # a bug here must not leave callers waiting forever
            for piece in pieces:
                for item in piece:
                    self._deliver(item, Result.failed(f"scheduler error: {type(exc).__name__}: {exc}"))
        finally:
            if threading.current_thread() is not self._thread:
                with self._cond:
                    self._calls.discard(threading.current_thread())
                self._slots.release()

    def _run_batch(self, pieces: list[list[_Item]]) -> None:
        rendered: list[list[_Item]] = []
        for piece in pieces:
            ok = []
            for item in piece:
                try:
                    item.text = self.engine.rendered(item.request)
                    ok.append(item)
                except Exception as exc:  # a request the engine cannot even render fails alone
                    self._deliver(
                        item, Result.failed(f"engine could not render the request: {type(exc).__name__}: {exc}")
                    )
            if ok:
                rendered.append(ok)
        if not rendered:
            return
        plan = plan_calls([[it.text for it in p] for p in rendered], self.max_batch, self.min_shared_prefix)
        calls = [[it for i in members for it in rendered[i]] for members in plan]
        calls.sort(key=lambda items: min(it.seq for it in items))  # oldest work first
        if not self.split_by_prefix:
            calls = [[it for call in calls for it in call]]
        for call in calls:
            with self._cond:
                if self._closed:
                    return
                items = []
                for item in call:
                    if item.state != "taken":
                        continue
                    if item.waiters:
                        item.state = "running"
                        items.append(item)
                    else:
                        self._forget(item, "dropped")
            if items:
                results = self._generate([it.request for it in items], self._deadline(items), [it.stop for it in items])
                for item, result in zip(items, results):
                    self._deliver(item, result)

    def _deadline(self, items: list[_Item]) -> float | None:
        """The latest deadline of the callers waiting on ``items`` (None: one of them waits for ever)."""
        with self._cond:
            deadlines = [t.deadline for it in items for t, _ in it.waiters]
        return None if not deadlines or None in deadlines else max(deadlines)  # type: ignore[type-var]

    def _generate(
        self, requests: list[Request], deadline: float | None = None, stops: list[threading.Event] | None = None
    ) -> list[Result]:
        start = time.monotonic()
        kwargs: dict[str, Any] = {}
        if deadline is not None and self.engine.supports_deadline:
            kwargs["deadline"] = deadline
        if stops is not None and getattr(self.engine, "supports_cancel", False):
            kwargs["cancel"] = stops
        try:
            results = self.engine.generate(requests, **kwargs)
            if (
                not isinstance(results, list)
                or len(results) != len(requests)
                or not all(isinstance(r, Result) for r in results)
            ):
                got = len(results) if isinstance(results, list) else type(results).__name__
                raise RuntimeError(f"engine returned {got} results for {len(requests)} requests")
            error = None
        except Exception as exc:  # engines should not raise, but one that does must not sink the batch
            error = exc
        with self._cond:
            self._stats.engine_calls += 1
            self._stats.engine_requests += len(requests)
            self._stats.largest_batch = max(self._stats.largest_batch, len(requests))
            self._stats.engine_seconds += time.monotonic() - start
            if error is not None and len(requests) > 1:
                self._stats.batch_failures += 1
        if error is None:
            return results
        if len(requests) == 1:
            return [Result.failed(f"engine error: {type(error).__name__}: {error}")]
        if stops is None:
            return [self._generate([r], deadline)[0] for r in requests]
        return [self._generate([r], deadline, [stop])[0] for r, stop in zip(requests, stops)]

    def _deliver(self, item: _Item, result: Result) -> None:
        with self._cond:
            if item.state in ("done", "dropped"):
                return
            self._forget(item, "done")
            if item.key is not None and self.memo and result.ok and not self._closed:
                self._memo[item.key] = _copy(result)
                self._memo.move_to_end(item.key)
                while len(self._memo) > self.memo_size:
                    self._memo.popitem(last=False)
            for n, (ticket, i) in enumerate(item.waiters):
                if n == 0:
                    self._fill(ticket, i, _copy(result))
                else:
                    self._stats.memo_hits += 1
                    self._fill(ticket, i, _memo_copy(result))
            # The engine's work is owed to one caller: the first waiter, else the first who gave up.
            owed = item.late[0] if not item.waiters and item.late else None
            item.waiters, item.late = [], []
        if owed is not None:
            try:
                owed(dataclasses.replace(result.usage))
            except Exception:  # a caller's bookkeeping must not stop the scheduler
                logger.exception("on_late_usage callback failed")
