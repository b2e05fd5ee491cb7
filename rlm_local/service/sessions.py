"""Sessions: multi-turn work on the same documents. A session keeps one REPL across its questions (the
variables a question's code made are there for the next one), its contexts (``context_0..N``; more can be
added later) and its history (each question, answer and run id; earlier questions and answers are shown to
the root model of the next question).

On disk (``data_dir/sessions/<owner>/<id>.json``, rewritten atomically after every change): the model, the
contexts (file ids, named contexts, inline texts), the history, and a snapshot of the REPL's plain-data
variables (str, numbers, lists, dicts up to ``SNAPSHOT_CHARS`` in all). After a server restart a session is
rebuilt from that: its contexts are read again from the stored documents, its history is kept, and its
plain-data variables are assigned again in a fresh REPL. What cannot be rebuilt: functions, classes,
modules and other objects in the REPL, and variables over the snapshot cap (``lost_variables`` names them).
Adding a context starts a new REPL (the sandbox loads contexts at start) and carries the variables over
the same way. Sessions idle longer than the TTL are closed and deleted.
"""

from __future__ import annotations

import builtins
import json
import re
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ..sandbox import Sandbox
from .files import _safe

SNAPSHOT_CHARS = 2_000_000
_VAR_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*): (\w+)")
_PLAIN = ("str", "int", "float", "bool", "list", "dict", "tuple", "NoneType")
_ID = re.compile(r"^sess_[0-9a-f]{20}$")


class ChatSession:
    """One service session: its documents, its question history and the snapshot of its REPL variables."""

    def __init__(self, id: str, owner: str, model: str, contexts: list[dict[str, Any]]) -> None:
        self.id, self.owner, self.model, self.contexts = id, owner, model, contexts
        self.history: list[dict[str, Any]] = []
        self.created = self.last_used = time.time()
        self.variables: dict[str, Any] = {}  # the snapshot to restore into a fresh REPL
        self.lost_variables: list[str] = []
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
                "lost_variables": self.lost_variables,
            },
            "restored_after_restart": self.restored,
        }

    def to_disk(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "model": self.model,
            "contexts": self.contexts,
            "history": self.history,
            "created": self.created,
            "last_used": self.last_used,
            "variables": self.variables,
            "lost_variables": self.lost_variables,
        }

    def question_with_history(self, question: str | None) -> str | None:
        if not self.history:
            return question
        lines = ["Earlier questions in this session (your REPL variables from them are still defined):"]
        for h in self.history[-10:]:
            lines.append(f"Q: {h['question']}\nA: {h['answer']}")
        return "\n".join(lines) + f"\n\nNow answer: {question}"

    # ---- the REPL that outlives runs -------------------------------------------------------------------
    def sandbox_provider(self, run: Any, context: Any) -> Any:
        self.current = run
        if self.sandbox is None or self.sandbox_contexts != len(self.contexts):
            old, self.sandbox = self.sandbox, None
            if old is not None:
                self.snapshot(old)
                old.close()
            sandbox = Sandbox(
                context=context,
                limits=run.settings.sandbox_limits,
                llm_handler=lambda prompts: self.current.llm_query(prompts),
                rlm_handler=lambda prompt, ctx: self.current.rlm_query(prompt, ctx),
            )
            self._restore(sandbox)
            self.sandbox, self.sandbox_contexts = sandbox, len(self.contexts)
        return nullcontext(self.sandbox)

    def snapshot(self, sandbox: Sandbox | None = None) -> None:
        """Keep the REPL's plain-data variables (for a restart or a new REPL)."""
        sandbox = sandbox or self.sandbox
        if sandbox is None:
            return
        listing = sandbox.run("SHOW_VARS()", wall_seconds=10)
        kept: dict[str, Any] = {}
        lost: list[str] = []
        size = 0
        for line in listing.stdout.splitlines():
            m = _VAR_LINE.match(line)
            if not m or m.group(1) == "context" or re.fullmatch(r"context_\d+", m.group(1)):
                continue
            name, kind = m.groups()
            if kind not in _PLAIN:
                lost.append(name)
                continue
            value = sandbox.read_variable(name, wall_seconds=10).value
            text = json.dumps(value, default=str)
            if size + len(text) > SNAPSHOT_CHARS:
                lost.append(name)
                continue
            size += len(text)
            kept[name] = value
        self.variables, self.lost_variables = kept, sorted(set(lost))

    def _restore(self, sandbox: Sandbox) -> None:
        for name, value in self.variables.items():
            sandbox.run(f"{name} = {value!r}", wall_seconds=10)

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None


class SessionStore:
    def __init__(self, root: Path, ttl: float) -> None:
        self.root, self.ttl = root, ttl
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
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            s = ChatSession(raw["id"], raw["owner"], raw["model"], raw["contexts"])
            s.history, s.created, s.last_used = raw["history"], raw["created"], raw["last_used"]
            s.variables, s.lost_variables = raw.get("variables", {}), raw.get("lost_variables", [])
            s.restored = True
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
        """Close and delete sessions idle longer than the TTL (not one answering a question)."""
        now = time.time() if now is None else now
        with self._lock:
            idle = [s for s in self._sessions.values() if now - s.last_used > self.ttl and not s.busy.locked()]
        for s in idle:
            self.delete(s.owner, s.id)
        return [s.id for s in idle]

    def _reap_loop(self) -> None:
        while not self._stop.wait(min(30.0, max(0.2, self.ttl / 4))):
            self.expire()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.close()
