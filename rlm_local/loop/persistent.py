"""``RLM(persistent=True)``: one REPL across ``completion()`` calls, as in the reference library.

The first completion's context is ``context`` (and ``context_0`` .. for a list). Each later completion
adds its context to the same live session as ``context_N`` and as ``context``, so the root's first look
at ``context`` finds the new document while earlier ones, and every variable the code defined, are still
there; ``history`` holds the earlier questions and answers (``[{"question": ..., "answer": ...}]``). The
REPL's sub-calls go to whichever run is using it; runs take turns (one REPL runs one cell at a time).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..sandbox import Sandbox
from .prompts import Context

if TYPE_CHECKING:
    from .run import Run


class PersistentREPL:
    """The session an RLM keeps between completions; ``provider`` is a Run's ``sandbox_provider``."""

    def __init__(self) -> None:
        self.sandbox: Sandbox | None = None
        self.history: list[dict[str, str]] = []
        self.names: list[str] = []  # the REPL name of each completion's whole context
        self._first: Context | None = None  # a list context, until it needs a name of its own
        self._run: Run | None = None
        self._turn = threading.Lock()  # one completion at a time uses the REPL

    @property
    def _current(self) -> Run:
        """The run using the REPL now (its cells make the sub-calls, so there is one while they arrive)."""
        if self._run is None:
            raise RuntimeError("no run is using this REPL")
        return self._run

    @contextlib.contextmanager
    def provider(self, run: Run, context: Context) -> Iterator[Sandbox]:
        with self._turn:
            self._run = run
            if self.sandbox is None:
                self.sandbox = run.open_sandbox(
                    context,
                    llm_handler=lambda ps: self._current.llm_query(ps),
                    rlm_handler=lambda p, c=None: self._current.rlm_query(p, c),
                )
                if isinstance(context, list):  # its items are context_0..; the whole list is `context` for now
                    self._first = context
                    self.names.append("context")
                else:
                    self.names.append(self.sandbox.add_context(context, "context_0"))
            else:
                if self._first is not None:  # `context` is about to name the new document: keep the list
                    self.names[0] = self.sandbox.add_context(self._first)
                    self._first = None
                self.names.append(self.sandbox.add_context(context, as_context=True))
                self.sandbox.add_context(list(self.history), "history")
            try:
                yield self.sandbox
            finally:
                self._run = None

    def record(self, question: str | None, answer: str) -> None:
        self.history.append({"question": question or "", "answer": answer})

    def follow_up_note(self) -> str:
        """What the root is told on a later completion, so it knows the older material is there."""
        if not self.names:
            return ""
        earlier = ", ".join(f"`{n}`" for n in self.names)
        return (
            f"(Persistent session, question {len(self.names) + 1}: the new document is `context`; the earlier "
            f"ones are {earlier}; earlier questions and answers are in `history`; your variables from "
            "earlier questions are still defined.)"
        )

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None

    def __repr__(self) -> str:
        return f"PersistentREPL(contexts={len(self.names)}, history={len(self.history)})"
