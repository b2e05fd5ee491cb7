"""Sessions: multi-turn work on the same documents. A session keeps one REPL across its questions (the
variables a question's code made are there for the next one), its contexts (``context``: one document as
a str, several as a list and ``context_0..N``; more can be added later, into the live REPL) and its history
(each question, answer and run id; earlier questions and answers are shown to the root model of the next
question).

After each question, within that question's time and while it still counts against its key, the REPL's
variables are saved (snapshot.py: faithfully, or named with the reason). On disk
(``data_dir/sessions/<owner>/<id>.json``, rewritten atomically after every change): the model, the
contexts, the history, the saved variables, and two lists that say what did not survive: ``unsaved``
(in the live REPL but not saved, so lost if the REPL is rebuilt; ``*`` when the variables could not be
listed) and ``lost`` (what the last rebuild of the REPL could not bring back; kept until a rebuild loses
nothing).

A REPL is a worker process, so live REPLs are capped per key and in all (``max_live_sessions_per_key``,
``max_live_sessions``): a question that needs one when the cap is reached closes the least recently used
idle one of that key (or of anyone, for the global cap), or gets 429 when none is idle. A REPL idle for
``session_idle_seconds`` is closed; its session stays and rebuilds it at the next question. Sessions idle
longer than ``session_ttl`` are deleted.
"""

from __future__ import annotations

import builtins
import json
import math
import re
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ..sandbox import Sandbox
from . import snapshot
from .config import ServiceConfig
from .files import _safe
from .schemas import ApiError

_ID = re.compile(r"^sess_[0-9a-f]{20}$")
SNAPSHOT_SECONDS = 10.0  # the longest a snapshot may take (less when the question's time runs out first)
SNAPSHOT_GRACE = 1.0  # a question that used all its time still gets this long to be saved


class ChatSession:
    """One service session: its documents, its question history and its REPL's saved variables."""

    def __init__(self, id: str, owner: str, model: str, contexts: list[dict[str, Any]]) -> None:
        self.id, self.owner, self.model, self.contexts = id, owner, model, contexts
        self.history: list[dict[str, Any]] = []
        self.created = self.last_used = time.time()
        self.variables: dict[str, Any] = {}  # the saved trees (snapshot.py), assigned again in a new REPL
        self.unsaved: dict[str, str] = {}  # name -> why it is not in `variables`
        self.lost: dict[str, str] = {}  # name -> why the last rebuild of the REPL could not bring it back
        self.restored = False  # rebuilt from disk after a restart
        self.sandbox: Sandbox | None = None
        self.sandbox_contexts = 0
        self.current: Any = None  # the Run asking now: the REPL's sub-calls go to it
        self.busy = threading.Lock()  # one question at a time

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "session",
            "model": self.model,
            "created_at": int(self.created),
            "last_used_at": int(self.last_used),
            "contexts": [
                {
                    "name": f"context_{i}",
                    **{k: v for k, v in c.items() if k != "text"},
                    "chars": len(c.get("text", "")) or c.get("chars"),
                }
                for i, c in enumerate(self.contexts)
            ],
            "history": self.history,
            "repl": {
                "live": self.sandbox is not None,
                "variables": sorted(self.variables),
                "unsaved_variables": dict(sorted(self.unsaved.items())),
                "lost_variables": sorted(self.lost),
                "lost_reasons": dict(sorted(self.lost.items())),
            },
            "restored_after_restart": self.restored,
        }

    def to_disk(self) -> dict[str, Any]:
        return {
            "format": 2,
            "id": self.id,
            "owner": self.owner,
            "model": self.model,
            "contexts": self.contexts,
            "history": self.history,
            "created": self.created,
            "last_used": self.last_used,
            "variables": self.variables,
            "unsaved": self.unsaved,
            "lost": self.lost,
        }

    @classmethod
    def from_disk(cls, raw: dict[str, Any]) -> ChatSession:
        s = cls(raw["id"], raw["owner"], raw["model"], raw["contexts"])
        s.history, s.created, s.last_used = raw["history"], raw["created"], raw["last_used"]
        if raw.get("format") == 2:
            s.variables, s.unsaved, s.lost = raw["variables"], raw["unsaved"], raw["lost"]
        else:  # saved by an earlier version: plain JSON values, and names without reasons
            s.variables = {k: _tree_of_json(v) for k, v in raw.get("variables", {}).items()}
            s.lost = {n: "not saved by an earlier version of the server" for n in raw.get("lost_variables", [])}
        s.restored = True
        return s

    def question_with_history(self, question: str | None) -> str | None:
        if not self.history:
            return question
        lines = ["Earlier questions in this session (your REPL variables from them are still defined):"]
        for h in self.history[-10:]:
            lines.append(f"Q: {h['question']}\nA: {h['answer']}")
        return "\n".join(lines) + f"\n\nNow answer: {question}"

    @property
    def live(self) -> bool:
        """Holds a REPL process, or is about to (a question is being answered)."""
        return self.sandbox is not None or self.busy.locked()

    # ---- the REPL that outlives runs -------------------------------------------------------------------
    def sandbox_provider(self, run: Any, context: Any) -> Any:
        """The run's REPL: the live one (with contexts added since), or a new one with the saved variables
        assigned again (within the run's time; what does not come back is named in ``lost``)."""
        self.current = run
        if self.sandbox is None:
            sandbox = run.open_sandbox(
                context,
                llm_handler=lambda prompts: self.current.llm_query(prompts),
                rlm_handler=lambda prompt, ctx=None: self.current.rlm_query(prompt, ctx),
            )
            left = run.budget.time_left()
            deadline = None if left is None else time.monotonic() + max(0.05, left)
            failed = snapshot.restore(sandbox, self.variables, deadline)
            self.lost, self.unsaved = {**self.unsaved, **failed}, {}
            self.sandbox, self.sandbox_contexts = sandbox, len(self.contexts)
        elif self.sandbox_contexts != len(self.contexts):
            self._add_contexts(self.sandbox, context)
        return nullcontext(self.sandbox)

    def _add_contexts(self, sandbox: Sandbox, context: Any) -> None:
        """Documents added since the REPL started, bound in the live REPL (nothing is lost)."""
        docs = context if isinstance(context, list) else [context]
        first_new = 0 if self.sandbox_contexts <= 1 else self.sandbox_contexts  # a str context had no context_0
        for i in range(first_new, len(docs)):
            sandbox.add_context(docs[i], f"context_{i}")
        sandbox.add_context(context, "context")
        self.sandbox_contexts = len(self.contexts)

    def save_variables(self, deadline: float) -> None:
        """Save the live REPL's variables (by ``deadline``: see snapshot.save)."""
        if self.sandbox is not None:
            self.variables, self.unsaved = snapshot.save(self.sandbox, deadline, self.variables)

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None


def snapshot_deadline(run_deadline: float | None) -> float:
    """When saving must end: the question's time budget, but at most SNAPSHOT_SECONDS from now, and at
    least SNAPSHOT_GRACE (the run may have used its whole budget)."""
    now = time.monotonic()
    end = min(run_deadline if run_deadline is not None else math.inf, now + SNAPSHOT_SECONDS)
    return max(end, now + SNAPSHOT_GRACE)


class SessionStore:
    def __init__(self, root: Path, config: ServiceConfig) -> None:
        self.root, self.config = root, config
        self.root.mkdir(parents=True, exist_ok=True)
        self._sessions: dict[str, ChatSession] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._load()
        self._reaper = threading.Thread(target=self._reap_loop, name="session-ttl", daemon=True)
        self._reaper.start()

    def _load(self) -> None:
        for path in self.root.glob("*/sess_*.json"):
            try:
                s = ChatSession.from_disk(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            self._sessions[s.id] = s

    def create(self, owner: str, model: str, contexts: list[dict[str, Any]]) -> ChatSession:
        s = ChatSession(f"sess_{uuid.uuid4().hex[:20]}", owner, model, contexts)
        with self._lock:
            self._sessions[s.id] = s
        self.save(s)
        return s

    def get(self, owner: str, session_id: str) -> ChatSession | None:
        with self._lock:
            s = self._sessions.get(session_id) if _ID.match(session_id or "") else None
        return s if s is not None and s.owner == owner else None

    def list(self, owner: str) -> list[ChatSession]:
        with self._lock:
            return [s for s in self._sessions.values() if s.owner == owner]

    def save(self, s: ChatSession) -> None:
        folder = self.root / _safe(s.owner)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{s.id}.tmp"
        tmp.write_text(json.dumps(s.to_disk(), default=str), encoding="utf-8")
        tmp.replace(folder / f"{s.id}.json")

    def make_room(self, s: ChatSession) -> None:
        """Before ``s`` (busy: its question was accepted) starts a REPL: keep the live REPLs under their
        caps by closing the least recently used idle ones, or refuse with 429."""
        if s.sandbox is not None:
            return
        caps = [
            (lambda x: x.owner == s.owner, self.config.max_live_sessions_per_key, "for this key"),
            (lambda x: True, self.config.max_live_sessions, "on this server"),
        ]
        with self._lock:
            for mine, cap, where in caps:
                live = [x for x in self._sessions.values() if x is not s and mine(x) and x.live]
                for victim in sorted((x for x in live if x.sandbox is not None), key=lambda x: x.last_used):
                    if len(live) < cap:
                        break
                    if victim.busy.acquire(blocking=False):  # idle: its variables were saved after its question
                        try:
                            victim.close()
                        finally:
                            victim.busy.release()
                        live.remove(victim)
                if len(live) >= cap:
                    raise ApiError(
                        429,
                        f"{cap} sessions with a live REPL are answering {where}; ask again when one is done",
                        "rate_limit_error",
                        code="live_sessions",
                        retry_after=5,
                    )

    def delete(self, owner: str, session_id: str) -> bool:
        s = self.get(owner, session_id)
        if s is None:
            return False
        with self._lock:
            self._sessions.pop(s.id, None)
        s.close()
        (self.root / _safe(owner) / f"{s.id}.json").unlink(missing_ok=True)
        return True

    def expire(self, now: float | None = None) -> builtins.list[str]:  # (list: the method above)
        """Delete sessions idle longer than the TTL and close REPLs idle longer than
        ``session_idle_seconds`` (never one answering a question); returns the deleted ids."""
        now = time.time() if now is None else now
        with self._lock:
            sessions = list(self._sessions.values())
        gone = []
        for s in sessions:
            if not s.busy.acquire(blocking=False):
                continue
            try:
                if now - s.last_used > self.config.session_ttl:
                    gone.append(s)
                elif now - s.last_used > self.config.session_idle_seconds:
                    s.close()
            finally:
                s.busy.release()
        for s in gone:
            self.delete(s.owner, s.id)
        return [s.id for s in gone]

    def _reap_loop(self) -> None:
        shortest = min(self.config.session_ttl, self.config.session_idle_seconds)
        while not self._stop.wait(min(30.0, max(0.2, shortest / 4))):
            self.expire()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.close()


def _tree_of_json(value: Any) -> Any:
    """A snapshot tree of a plain JSON value (sessions saved by an earlier version)."""
    if value is None or isinstance(value, (bool, str)):
        return ["v", value]
    if isinstance(value, int):
        return ["i", str(value)]
    if isinstance(value, float):
        return ["f", repr(value)]
    if isinstance(value, list):
        return ["l", [_tree_of_json(v) for v in value]]
    return ["d", [[["v", str(k)], _tree_of_json(v)] for k, v in dict(value).items()]]
