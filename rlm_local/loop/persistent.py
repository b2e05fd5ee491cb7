"""``RLM(persistent=True)``: one REPL across ``completion()`` calls, with the reference library's meaning.

Each completion's context is a new document in the same live session: ``context_0`` is the first, then
``context_1``, ``context_2``...; ``context`` stays the first (as in the reference). A list context's items
take numbered names of their own (rlm-local's naming: the first list's items are ``context_0``..), so the
next document takes the next free number; the root is told each completion which names exist. After each
completion its root conversation (``{"role", "content"}`` messages, the final reply included) becomes
``history_N``, and ``history`` is ``history_0``. Every variable the code defined survives; the answer dict
starts each completion not ready. The REPL's sub-calls go to whichever run is using it; runs take turns
(one REPL runs one cell at a time).

``locals`` reads the REPL's variables (as plain data, through the sandbox: they live in another process);
``get_context_count()`` and ``get_history_count()`` are the reference's counters.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..sandbox import Sandbox
from .prompts import Context

if TYPE_CHECKING:
    from .run import Run

RESET_ANSWER = 'answer = {"content": "", "ready": False}'  # our fixed code, never the model's


class Variables:
    """Read-only access to a live REPL's variables: ``session.locals["x"]``, ``.get``, ``in``."""

    def __init__(self, session: PersistentREPL) -> None:
        self._session = session

    def __getitem__(self, name: str) -> Any:
        sandbox = self._session.sandbox
        cell = sandbox.read_variable(name) if sandbox is not None else None
        if cell is None or cell.error is not None:
            raise KeyError(name)
        return cell.value

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name, _MISSING) is not _MISSING


_MISSING = object()


class PersistentREPL:
    """The session an RLM keeps between completions; ``provider`` is a Run's ``sandbox_provider``."""

    def __init__(self) -> None:
        self.sandbox: Sandbox | None = None
        self.names: list[str] = []  # the REPL name of each completion's context
        self.next_index = 0  # the number of the next context_N
        self.histories = 0
        self._run: Run | None = None
        self._turn = threading.Lock()  # one completion at a time uses the REPL

    @property
    def locals(self) -> Variables:
        return Variables(self)

    def get_context_count(self) -> int:
        return len(self.names)

    def get_history_count(self) -> int:
        return self.histories

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
                    rlm_batch_handler=lambda ps, cs: self._current.rlm_query_batched(ps, cs),
                )
                # A list's items are context_0.. already (the worker names them); anything else is context_0.
                if isinstance(context, list):
                    self.names.append("context")
                    self.next_index = len(context)
                else:
                    self.names.append(self.sandbox.add_context(context, "context_0"))
                    self.next_index = 1
            else:
                self.names.append(self.sandbox.add_context(context, f"context_{self.next_index}"))
                self.next_index += 1
                self.sandbox.run(RESET_ANSWER)
            try:
                yield self.sandbox
            finally:
                self._run = None

    def record(self, messages: list[dict[str, str]]) -> None:
        """Keep a finished completion's conversation as ``history_N`` (and ``history`` for the first)."""
        if self.sandbox is None:
            return
        self.sandbox.add_context(messages, f"history_{self.histories}")
        if self.histories == 0:
            self.sandbox.add_context(messages, "history")
        self.histories += 1

    def follow_up_note(self) -> str:
        """What the root is told on a later completion, so it knows the older material is there."""
        if not self.names:
            return ""
        n = len(self.names) + 1
        histories = {
            0: "no earlier conversation was kept",
            1: "1 prior conversation history is in `history`",
        }.get(
            self.histories,
            f"{self.histories} prior conversation histories are in history_0 .. history_{self.histories - 1}",
        )
        return (
            f"Note: persistent session, {n} contexts: this question's document is `context_{self.next_index}`; "
            f"the earlier ones are {', '.join(f'`{name}`' for name in self.names)} (`context` is the first); "
            f"{histories}; your variables from earlier questions are still defined."
        )

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None

    def __repr__(self) -> str:
        return f"PersistentREPL(contexts={len(self.names)}, histories={self.histories})"
