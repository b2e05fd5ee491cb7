"""The oracle: a scripted model that answers every item correctly through the real loop and sandbox.

Its root replies are each family's ``oracle_code`` (REPL code that computes the answer from ``context``,
with sub-calls where the family needs reading, e.g. OOLONG labels); its sub-call replies are each family's
``oracle_sub``. An oracle sweep scoring 100% proves that every item is solvable from its context and that
every scorer accepts a right answer. Also a model-free self-check: ``rlm-local bench niah --backend oracle``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ..engines import Request
from ..engines.scripted import ScriptedEngine
from .items import Item, family


def _text_of(request: Request) -> str:
    if request.prompt is not None:
        return request.prompt
    return "\n".join(m["content"] for m in request.messages or ())


def _is_root(request: Request) -> bool:
    return request.messages is not None and request.messages[0]["role"] == "system"


class Oracle:
    """The reply function of the oracle engine; ``add`` registers items (thread-safe)."""

    def __init__(self, items: Iterable[Item] = ()) -> None:
        self._code: dict[str, str] = {}
        self._families: set[str] = set()
        self._lock = threading.Lock()
        self.add(items)

    def add(self, items: Iterable[Item]) -> None:
        with self._lock:
            for item in items:
                code = family(item.family).oracle_code(item)
                if self._code.setdefault(item.question, code) != code:
                    raise AssertionError(f"two items ask {item.question!r} but need different code")
                self._families.add(item.family)

    def __call__(self, request: Request) -> str:
        text = _text_of(request)
        if _is_root(request):
            assert request.messages is not None  # _is_root: a chat request
            first_user = request.messages[1]["content"]
            with self._lock:
                code = next((c for q, c in self._code.items() if q in first_user), None)
            if code is None:
                return "FINAL(no oracle answer for this question)"
            return f"```repl\n{code}\n```\n"
        for name in sorted(self._families):
            reply = family(name).oracle_sub(text)
            if reply is not None:
                return reply
        return ""


def oracle_engine(items: Iterable[Item] = ()) -> tuple[ScriptedEngine, Oracle]:
    """A chat-format scripted engine driven by an :class:`Oracle` (returned too, to add items later)."""
    oracle = Oracle(items)
    return ScriptedEngine(oracle, model_name="oracle", prompt_format="chat", context_length=1_000_000), oracle
