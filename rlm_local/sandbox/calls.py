"""Serving the sub-calls a sandbox cell makes (parent side): llm_query, rlm_query and tool functions.

Everything arrives from the untrusted worker: the call is decoded and checked against the limits here
(prompts per call, prompt and call sizes, items, calls per cell and per session) before any handler
runs; a handler's exception goes back to the cell as its message only (no host traceback).
"""

from __future__ import annotations

import json
import keyword
from collections.abc import Callable, Iterable
from typing import Any, TypedDict

from .limits import Limits, validate_call
from .worker import protocol


class Spent(TypedDict):
    """What one cell has spent on sub-calls so far: seconds and prompts sent."""

    sub: float
    calls: int


def split_tools(tools: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(functions, data) of a tools mapping, checked: names usable in the REPL and not its own, data that
    is JSON. Raises ValueError or TypeError with the reason."""
    if not isinstance(tools, dict):
        raise TypeError("tools must be a dict of name -> function or JSON data")
    funcs: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for name, value in tools.items():
        if (
            not isinstance(name, str)
            or not name.isidentifier()
            or name.startswith("_")
            or keyword.iskeyword(name)
            or name in protocol.RESERVED_NAMES
        ):
            raise ValueError(
                f"{name!r} cannot be a tool name in the REPL (identifiers only, not starting with '_', "
                "not one of the REPL's own names)"
            )
        if callable(value):
            funcs[name] = value
        else:
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise TypeError(f"tool {name!r} is neither a function nor JSON data") from None
            data[name] = value
    return funcs, data


class CallServer:
    """The handlers of one sandbox session and its running count of sub-calls."""

    def __init__(
        self,
        limits: Limits,
        llm_handler: Callable[[list[str]], Iterable[str]] | None,
        rlm_handler: Callable[[str, Any], str] | None,
        rlm_batch_handler: Callable[[list[str], list[Any]], Iterable[str]] | None,
        tools: dict[str, Any],
    ) -> None:
        self.limits = limits
        self.llm_handler = llm_handler
        self.rlm_handler = rlm_handler
        self.rlm_batch_handler = rlm_batch_handler
        self.tools = tools
        self.calls_session = 0

    def serve(self, msg: dict[str, Any], parts: list[str], spent: Spent) -> tuple[dict[str, Any], list[str]]:
        try:
            results = self._call_handler(msg, parts, spent)
        except Exception as e:  # message only: the model must never see a host traceback
            text = str(e)
            return {"op": "reply", "ok": False}, [(f"{type(e).__name__}: {text}" if text else type(e).__name__)[:2000]]
        return {"op": "reply", "ok": True}, results

    def _call_handler(self, msg: dict[str, Any], parts: list[str], spent: Spent) -> list[str]:
        L = self.limits
        prompts, contexts = protocol.split_call(msg, parts)
        kind = msg.get("kind")
        if kind == "tool":
            return self._call_tool(prompts, contexts, spent)
        validate_call(kind, prompts, contexts, L)
        n = len(prompts)
        if spent["calls"] + n > L.max_calls_per_cell:
            raise RuntimeError(f"sub-call limit reached: at most {L.max_calls_per_cell} sub-calls per cell")
        if self.calls_session + n > L.max_calls_per_session:
            raise RuntimeError(f"sub-call limit reached: at most {L.max_calls_per_session} sub-calls per session")
        spent["calls"] += n
        self.calls_session += n
        if kind == "rlm" and self.rlm_batch_handler is not None:
            assert contexts is not None  # validate_call: an rlm call carries one context per prompt
            results = list(self.rlm_batch_handler(prompts, contexts))
        elif kind == "rlm" and self.rlm_handler is not None:
            assert contexts is not None
            results = [self.rlm_handler(p, c) for p, c in zip(prompts, contexts)]
        else:
            results = self._llm(prompts)
        if not isinstance(results, list) or len(results) != n or not all(isinstance(r, str) for r in results):
            raise RuntimeError(f"the model server returned a malformed answer for {n} prompt(s)")
        return results

    def _call_tool(self, prompts: list[str], contexts: list[Any] | None, spent: Spent) -> list[str]:
        """A tool function the cell called: [name, JSON [args, kwargs]] -> [JSON result]."""
        if len(prompts) != 2 or contexts is not None or prompts[0] not in self.tools:
            raise ValueError("unknown tool")
        if len(prompts[1]) > self.limits.max_prompt_chars:
            raise ValueError(f"tool arguments too large (limit {self.limits.max_prompt_chars} characters)")
        if spent["calls"] + 1 > self.limits.max_calls_per_cell:
            raise RuntimeError(f"call limit reached: at most {self.limits.max_calls_per_cell} calls per cell")
        spent["calls"] += 1
        try:
            args, kwargs = json.loads(prompts[1])
        except (ValueError, TypeError, RecursionError):
            raise ValueError("tool arguments must be JSON data") from None
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("tool arguments must be JSON data")
        result = self.tools[prompts[0]](*args, **kwargs)
        try:
            return [json.dumps(result, ensure_ascii=False)]
        except (TypeError, ValueError):
            raise TypeError(f"tool {prompts[0]} returned {type(result).__name__}, not JSON data") from None

    def _llm(self, prompts: list[str]) -> list[str]:
        if self.llm_handler is None:
            raise RuntimeError("no sub-model is configured for llm_query in this session")
        return list(self.llm_handler(prompts))
