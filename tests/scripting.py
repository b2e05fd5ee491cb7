"""Helpers for tests that drive the loop with the scripted engine: write replies, read requests."""

from __future__ import annotations

from rlm_local.engines import Request


def repl(code: str, prose: str = "Let me look.") -> str:
    """A root reply with one ```repl block."""
    return f"{prose}\n```repl\n{code}\n```\n"


def is_root(req: Request) -> bool:
    """A root turn (chat format: it opens with the system prompt), not a sub-call."""
    return req.messages is not None and req.messages[0]["role"] == "system"


def last_user(req: Request) -> str:
    return [m for m in req.messages if m["role"] == "user"][-1]["content"]
