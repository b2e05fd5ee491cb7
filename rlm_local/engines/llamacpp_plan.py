"""llama.cpp's settings and slot planning as plain data and pure decisions (no xllamacpp: tested without a model).

Settings (``resolve_settings``): an explicit argument beats the model card's ``[llamacpp]`` section, which
beats our defaults; the card's ``n_parallel`` and ``context_length`` are engine arguments, everything else
in it (and in the engine's ``**params``) is an ``xllamacpp.CommonParams`` field. Prompt batches are kept
small enough (``n_batch``) that one batch of prompt processing takes well under a second on a CPU core,
because a request is only stopped between batches, unless the card sets ``n_batch`` itself.

Slot planning (``SlotPlanner``): llama.cpp decodes all busy slots together (continuous batching) and keeps
each slot's KV for the next request that starts with the same tokens. The planner decides, for requests
of any number of concurrent ``generate`` calls, which slot runs which request and when:
- a request whose prompt starts with what a slot holds (>= ``min_prefix`` tokens: the next turn of a
  conversation) runs on that slot;
- siblings of one call sharing a prefix (the engines' one grouping rule, ``engines.prefix``) get a *warm*
  task that computes the prefix once into one slot (whose state the engine saves to a file); each
  sibling then runs on a slot that holds exactly that prefix, restoring the file into it first if needed;
  a sibling whose slot already holds more of it than the group shares stays out of the group;
- the same across calls: a request that shares a long prefix (>= ``min_prefix`` tokens more than any slot
  holds for it) with a request of another call, queued or running, waits for one warm task that computes
  that prefix, or joins the open group whose prefix it shares; siblings of one call join an open group
  that computes nearly all of their shared prefix (the scheduler may hand several runs' first turns over
  as one call) instead of computing it again beside it. Concurrent runs of one sweep or service
  start with the same system prompt: it is computed twice (by the first run and the warm task) instead of
  once per run, because llama.cpp does not share prompt processing between slots;
- free slots take work in this order: the task that prefers them, siblings of the prefix they hold,
  warm tasks, other siblings, requests with no preference (least recently used slot first), and last a
  request whose preferred slot is busy (waiting would serialise the batch). More requests than slots
  wait and start as slots free up.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .prefix import common_prefix_len, sibling_prefixes
from .tokens import default_batch_threads, default_threads

DEFAULT_SLOTS = 16  # one wave for 16 siblings; 64 take four (scripts/results/bench_engines.json)
DEFAULT_SLOT_CONTEXT = 8192  # tokens per slot: the embedded card keeps root prompts under 6,000
DEFAULT_CACHE_RAM_MIB = 1024
# Prompt tokens per batch ~ PROMPT_BATCH_BYTES / model file size: 128 for the 250 MB embedded model and 32 for
# the 1.1 GB quality model, about half a second of one CPU core each (a stop waits for the batch to end;
# smaller batches cost prompt throughput: 220 tokens/s at 64 against 247-254 at 128-512, profile_llamacpp.json).
PROMPT_BATCH_BYTES = 32e9
MIN_BATCH, MAX_BATCH = 16, 512
ENGINE_ARGS = ("n_parallel", "context_length", "threads", "batch_threads", "cache_ram_mib")


@dataclass(frozen=True)
class LlamaSettings:
    n_parallel: int  # slots: requests decoded together
    context_length: int  # tokens per slot (prompt and reply of one request)
    threads: int  # single-stream decoding
    batch_threads: int  # prompt processing and decode steps of several slots
    cache_ram_mib: int  # host-RAM prompt cache for slots that were reassigned
    params: dict[str, Any] = field(default_factory=dict)  # further CommonParams fields (n_batch, n_ubatch...)


def prompt_batch(model_bytes: int) -> int:
    """Prompt tokens per llama.cpp batch for a model file of this size (a power of two; see PROMPT_BATCH_BYTES)."""
    if model_bytes <= 0:
        return MAX_BATCH
    tokens = PROMPT_BATCH_BYTES / model_bytes
    return int(min(MAX_BATCH, max(MIN_BATCH, 2 ** round(math.log2(tokens)))))


def resolve_settings(
    explicit: Mapping[str, Any], card_section: Mapping[str, Any] | None, params: Mapping[str, Any], model_bytes: int
) -> LlamaSettings:
    """The engine's settings: ``explicit`` engine arguments (None means not given) and ``params`` beat the
    card's section, which beats the defaults. ``explicit["min_parallel"]`` raises the card's or the default
    slot count to at least that many (a sweep of K runs at once keeps each run's conversation in a slot of
    its own); an explicit ``n_parallel`` is kept as given. Raises ValueError for a value out of range."""
    card = dict(card_section or {})
    extra = {k: v for k, v in card.items() if k not in ENGINE_ARGS}
    extra.update(params)
    chosen: dict[str, Any] = {}
    defaults = {
        "n_parallel": DEFAULT_SLOTS,
        "context_length": DEFAULT_SLOT_CONTEXT,
        "threads": default_threads(),
        "batch_threads": default_batch_threads(),
        "cache_ram_mib": DEFAULT_CACHE_RAM_MIB,
    }
    for name in ENGINE_ARGS:
        value = explicit.get(name)
        chosen[name] = int(value if value is not None else card.get(name, defaults[name]))
    if explicit.get("n_parallel") is None and explicit.get("min_parallel") is not None:
        chosen["n_parallel"] = max(chosen["n_parallel"], int(explicit["min_parallel"]))
    if (
        chosen["n_parallel"] < 1
        or chosen["context_length"] < 16
        or chosen["threads"] < 1
        or chosen["batch_threads"] < 1
    ):
        raise ValueError("n_parallel, threads and batch_threads must be >= 1 and context_length >= 16")
    if chosen["cache_ram_mib"] < 0:
        raise ValueError("cache_ram_mib must be >= 0")
    n_batch = int(extra.get("n_batch", prompt_batch(model_bytes)))
    extra["n_batch"] = n_batch
    extra["n_ubatch"] = int(extra.get("n_ubatch", n_batch))
    if n_batch < 1 or not 1 <= extra["n_ubatch"] <= n_batch:
        raise ValueError(f"need 1 <= n_ubatch <= n_batch, got n_ubatch={extra['n_ubatch']}, n_batch={n_batch}")
    return LlamaSettings(params=extra, **chosen)


def file_size(path: str | os.PathLike[str]) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# ---- slot planning ---------------------------------------------------------------------------------------------
@dataclass
class Slot:
    tokens: list[int] = field(default_factory=list)  # the prompt it last held (what llama.cpp may reuse)
    fresh_group: int | None = None  # holds exactly this group's prefix, never extended since
    used: int = 0  # planner clock at its last assignment (least recently used first)
    busy: bool = False
    running: Task | None = None  # the task it runs while busy


@dataclass(eq=False)
class Task:
    """One unit of slot work: a request (``warm`` False) or the computation of a group's prefix."""

    ids: list[int]
    payload: Any = None  # the engine's own record for the task
    group: int | None = None
    warm: bool = False
    prefer: int | None = None  # the slot already holding most of this prompt
    held: int = 0  # how many leading tokens of it that slot holds
    ready: bool = True  # a sibling waits for its group's warm task
    restore: bool = False  # set at assignment: the slot must load the group's prefix first


@dataclass
class _Group:
    prefix: list[int]
    tasks: list[Task]  # members not finished yet (of any number of calls)
    warmed: bool = False


class SlotPlanner:
    """Slot states and queued tasks of one llama.cpp server; not thread-safe (the engine holds a lock)."""

    def __init__(self, n_slots: int, min_prefix: int, share_prefix: bool = True) -> None:
        if n_slots < 1 or min_prefix < 1:
            raise ValueError("n_slots and min_prefix must be >= 1")
        self.slots = [Slot() for _ in range(n_slots)]
        self.min_prefix = min_prefix
        self.share_prefix = share_prefix
        self.pending: list[Task] = []
        self.groups: dict[int, _Group] = {}
        self._group_ids = itertools.count()
        self._clock = itertools.count(1)

    # ---- adding work ----------------------------------------------------------------------------------------
    def add(self, ids: list[list[int]], payloads: list[Any]) -> tuple[list[Task], list[Task]]:
        """Queue the requests of one call: returns their tasks (same order) and the warm tasks of their groups
        (queued too; their payload is None for the caller to set)."""
        tasks = [Task(list(t), p) for t, p in zip(ids, payloads)]
        for t in tasks:
            t.prefer, t.held = self.best_slot(t.ids)
        warms = self._group(tasks) if self.share_prefix else []
        if self.share_prefix:
            for t in tasks:
                if t.group is None and (warm := self._share_across_calls(t)) is not None:
                    warms.append(warm)
        self.pending.extend(warms + tasks)
        return tasks, warms

    def members(self, gid: int | None) -> list[Task]:
        """The requests still waiting on or using group ``gid``'s prefix (empty once it is closed)."""
        group = self.groups.get(gid) if gid is not None else None
        return list(group.tasks) if group is not None else []

    def _join(self, t: Task, gid: int) -> None:
        group = self.groups[gid]
        group.tasks.append(t)
        t.group, t.prefer, t.ready = gid, None, group.warmed

    def _share_across_calls(self, t: Task) -> Task | None:
        """Joins ``t`` to an open group, or makes a group (returning its warm task) with the queued requests of
        other calls sharing its prefix, when that saves at least min_prefix tokens over the slot ``t`` prefers.
        Called before ``t``'s own call is queued, so everything in ``pending`` belongs to other calls."""
        worth = self._usable(t) + self.min_prefix
        gid, n = self._open_group(t.ids)
        if gid is not None and n >= worth:
            self._join(t, gid)
            return None
        queued = [x for x in self.pending if not x.warm and x.group is None]
        running = [slot.running for slot in self.slots if slot.running is not None and not slot.running.warm]
        n = max((common_prefix_len(x.ids, t.ids) for x in queued + running), default=0)
        if n < worth:
            return None
        gid = next(self._group_ids)
        prefix = t.ids[:n]
        self.groups[gid] = _Group(prefix, [])
        self._join(t, gid)
        for x in queued:
            if common_prefix_len(x.ids, prefix) >= self._usable(x) + self.min_prefix:
                self._join(x, gid)
        prefer, _ = self.best_slot(prefix)
        return Task(prefix, None, group=gid, warm=True, prefer=prefer)

    def _open_group(self, ids: list[int]) -> tuple[int | None, int]:
        """The open group sharing the longest prefix with ``ids``, and that length."""
        return max(
            ((g, common_prefix_len(group.prefix, ids)) for g, group in self.groups.items()),
            key=lambda x: x[1],
            default=(None, 0),
        )

    def _group(self, tasks: list[Task]) -> list[Task]:
        warms = []
        for g in sibling_prefixes([t.ids for t in tasks], self.min_prefix):
            members = [tasks[i] for i in g.members if tasks[i].held <= g.shared]
            if len(members) < 2:
                continue
            prefix = members[0].ids[: g.shared]
            # An open group (of a concurrent call) that already computes nearly all of it: join it rather than
            # compute the same prefix once more in another slot at the same time.
            gid, n = self._open_group(prefix)
            if gid is not None and n >= max(g.shared - self.min_prefix, self.min_prefix):
                for t in members:
                    self._join(t, gid)
                continue
            gid = next(self._group_ids)
            self.groups[gid] = _Group(prefix, [])
            for t in members:
                self._join(t, gid)
            prefer, _ = self.best_slot(prefix)
            warms.append(Task(prefix, None, group=gid, warm=True, prefer=prefer))
        return warms

    def best_slot(self, ids: list[int]) -> tuple[int | None, int]:
        """The slot holding the longest prefix of ``ids`` (at least min_prefix tokens), and its length; a busy
        slot must hold min_prefix tokens more than a free one to be chosen (its state is being replaced)."""
        best, best_len, best_score = None, 0, self.min_prefix - 1
        for s, slot in enumerate(self.slots):
            n = common_prefix_len(slot.tokens, ids)
            score = n - self.min_prefix if slot.busy else n
            if n >= self.min_prefix and score > best_score:
                best, best_len, best_score = s, n, score
        return best, best_len

    def _usable(self, t: Task) -> int:
        """How many leading tokens of ``t`` a free slot holds (its preferred slot's, unless that is busy)."""
        return t.held if t.prefer is not None and not self.slots[t.prefer].busy else 0

    # ---- assigning ------------------------------------------------------------------------------------------
    def dispatch(self) -> list[tuple[int, Task]]:
        """Assign queued tasks to free slots (see the module doc for the order); marks those slots busy."""
        out: list[tuple[int, Task]] = []
        free = [s for s, slot in enumerate(self.slots) if not slot.busy]
        # First the slots some ready task prefers or whose fresh prefix a ready sibling needs, then the rest
        # least recently used first (a slot holding a recent conversation is the last one overwritten).
        wanted = {t.prefer for t in self.pending if t.ready and t.prefer is not None}
        fresh = {t.group for t in self.pending if t.ready and t.group is not None}
        free.sort(key=lambda s: (s not in wanted and self.slots[s].fresh_group not in fresh, self.slots[s].used))
        for s in free:
            task = self._pick(s)
            if task is None:
                continue
            self.pending.remove(task)
            slot = self.slots[s]
            task.restore = task.group is not None and not task.warm and slot.fresh_group != task.group
            slot.busy, slot.running, slot.used = True, task, next(self._clock)
            out.append((s, task))
        return out

    def _pick(self, s: int) -> Task | None:
        fresh = self.slots[s].fresh_group
        busy = {i for i, slot in enumerate(self.slots) if slot.busy}
        ranks = (
            lambda t: t.prefer == s,
            lambda t: t.group is not None and t.group == fresh and not t.warm,
            lambda t: t.warm,
            lambda t: t.group is not None,
            lambda t: t.prefer is None,
            lambda t: t.prefer in busy,  # its slot is taken: waiting would run the batch one by one
        )
        for rank in ranks:
            for t in self.pending:
                if t.ready and rank(t):
                    return t
        return None

    # ---- results ------------------------------------------------------------------------------------------
    def finished(self, s: int, task: Task, ok: bool) -> int | None:
        """Record that ``task`` ended on slot ``s``. Returns a group id whose prefix file is no longer needed."""
        slot = self.slots[s]
        slot.busy, slot.running = False, None
        if task.warm:
            assert task.group is not None
            slot.tokens, slot.fresh_group = (list(task.ids), task.group) if ok else ([], None)
            group = self.groups.get(task.group)
            if group is None:  # every sibling left while the prefix was computed
                return task.group if ok else None
            group.warmed = ok
            for t in self.pending:  # on failure the siblings run anyway, each computing its own prompt
                if t.group == task.group:
                    t.ready = True
                    if not ok:
                        t.group = None
                        t.prefer, t.held = self.best_slot(t.ids)
            if not ok:
                return self._close_group(task.group)
            return None
        slot.tokens, slot.fresh_group = list(task.ids), None
        return self._member_done(task)

    def drop(self, task: Task) -> int | None:
        """Forget a queued task that will not run (cancelled). Returns a group id as ``finished`` does."""
        if task in self.pending:
            self.pending.remove(task)
        if task.warm:
            return None
        return self._member_done(task)

    def _member_done(self, task: Task) -> int | None:
        if task.group is None or task.group not in self.groups:
            return None
        group = self.groups[task.group]
        if task in group.tasks:
            group.tasks.remove(task)
        if group.tasks:
            return None
        warm = next((t for t in self.pending if t.warm and t.group == task.group), None)
        if warm is not None:  # every sibling left before its prefix was computed
            self.pending.remove(warm)
        return self._close_group(task.group)

    def _close_group(self, gid: int) -> int | None:
        group = self.groups.pop(gid, None)
        return gid if group is not None and group.warmed else None

    def restored(self, s: int, task: Task) -> None:
        """The group's prefix was loaded into slot ``s`` for ``task``."""
        assert task.group is not None and task.group in self.groups
        self.slots[s].tokens, self.slots[s].fresh_group = list(self.groups[task.group].prefix), task.group

    @property
    def idle(self) -> bool:
        return not self.pending and not any(slot.busy for slot in self.slots)
