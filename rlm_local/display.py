"""Showing a run as it happens, on stderr (stdout is for the answer). Listens to trajectory events."""
from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status


def _short(text: Any, limit: int = 160) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


class ProgressDisplay:
    """A live status line (turn, sub-calls, tokens, elapsed) plus one printed line per step.
    ``verbose`` also prints the root's code and the cells' output in full."""

    def __init__(self, console: Console | None = None, verbose: bool = False, live: bool = True) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.verbose = verbose
        self._lock = threading.Lock()
        self._started = time.time()
        self._turns = 0
        self._subcalls = 0
        self._tokens = 0
        self._status: Status | None = (self.console.status("starting…") if live and self.console.is_terminal
                                       else None)

    def __enter__(self) -> "ProgressDisplay":
        self._started = time.time()
        if self._status is not None:
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._handle(event)
            if self._status is not None:
                self._status.update(f"turn {self._turns} · {self._subcalls} sub-calls · {self._tokens:,} tokens · "
                                    f"{time.time() - self._started:.0f} s")

    def _handle(self, ev: dict[str, Any]) -> None:
        kind, depth = ev["event"], ev.get("depth", 0)
        pad = "  " * depth
        say = self.console.print
        if kind == "context" and depth == 0:
            meta = ev["metadata"]
            say(f"[dim]context: {meta['type']}, {meta['chars']:,} characters, "
                f"{'' if meta['tokens_exact'] else '~'}{meta['tokens']:,} tokens[/dim]")
        elif kind == "root_turn":
            self._turns += depth == 0
            self._tokens += int(ev.get("prompt_tokens") or 0)
            label = "final answer request" if ev.get("final_request") else f"turn {ev.get('iteration')}"
            if ev.get("error"):
                say(f"{pad}[red]{label} (depth {depth}): engine error: {escape(_short(ev['error']))}[/red]")
            else:
                say(f"{pad}[bold cyan]{label}[/bold cyan] (depth {depth}, {ev.get('prompt_tokens', 0):,} prompt tokens, "
                    f"{ev.get('seconds', 0):.1f} s)")
                if self.verbose:
                    say(escape(str(ev.get("reply", ""))))
        elif kind == "cell" and ev.get("final") is not None:
            say(f"{pad}  cell ran FINAL in {ev.get('seconds', 0):.2f} s: {escape(_short(ev['final'], 120))}")
        elif kind == "cell":
            status = "[red]error[/red]" if ev.get("error") else "[green]ok[/green]"
            extra = f", {ev['batched_rewrites']} loop(s) batched" if ev.get("batched_rewrites") else ""
            say(f"{pad}  cell {status} in {ev.get('seconds', 0):.2f} s{extra}: "
                f"{escape(_short(ev.get('error') or ev.get('stdout') or '(no output)', 120))}")
            if self.verbose and ev.get("stdout"):
                say(escape(str(ev["stdout"])))
        elif kind == "subcall":
            self._subcalls += 1
            if ev.get("kind") == "rlm" or self.verbose:
                say(f"{pad}  [magenta]{ev.get('kind')}_query[/magenta] (depth {depth}): "
                    f"{escape(_short(ev.get('prompt'), 80))} → {escape(_short(ev.get('response') or ev.get('error'), 80))}")
        elif kind == "child_start":
            say(f"{pad}[magenta]child RLM at depth {depth}[/magenta]")
        elif kind == "final":
            say(f"[bold green]done[/bold green]: {ev.get('stopped_reason')} after {ev.get('iterations')} turn(s), "
                f"{ev.get('seconds', 0):.1f} s")


class VerbosePrinter(ProgressDisplay):
    """What ``RLM(verbose=True)`` prints: every step in full, no live status line."""

    def __init__(self) -> None:
        super().__init__(verbose=True, live=False)
