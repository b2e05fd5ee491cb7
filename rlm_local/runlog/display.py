"""Showing a run as it happens, on stderr (stdout is for the answer). Listens to the typed events of events.py."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status

from .events import CellRan, ChildStart, Compacted, ContextDescribed, Event, RootTurn, RunFinal, SubCall


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
        self._status: Status | None = self.console.status("starting…") if live and self.console.is_terminal else None

    def __enter__(self) -> ProgressDisplay:
        self._started = time.time()
        if self._status is not None:
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._handle(event)
            if self._status is not None:
                self._status.update(
                    f"turn {self._turns} · {self._subcalls} sub-calls · {self._tokens:,} tokens · "
                    f"{time.time() - self._started:.0f} s"
                )

    def _handle(self, ev: Event) -> None:
        pad = "  " * getattr(ev, "depth", 0)
        say = self.console.print
        if isinstance(ev, ContextDescribed) and ev.depth == 0:
            meta = ev.metadata
            say(
                f"[dim]context: {meta['type']}, {meta['chars']:,} characters, "
                f"{'' if meta['tokens_exact'] else '~'}{meta['tokens']:,} tokens[/dim]"
            )
        elif isinstance(ev, RootTurn):
            self._turns += ev.depth == 0
            self._tokens += ev.prompt_tokens
            label = "final answer request" if ev.final_request else f"turn {ev.iteration}"
            label = "compaction summary" if ev.compaction else label
            if ev.error:
                say(f"{pad}[red]{label} (depth {ev.depth}): engine error: {escape(_short(ev.error))}[/red]")
            else:
                say(
                    f"{pad}[bold cyan]{label}[/bold cyan] (depth {ev.depth}, {ev.prompt_tokens:,} prompt tokens, "
                    f"{ev.seconds:.1f} s)"
                )
                if self.verbose:
                    say(escape(ev.reply))
        elif isinstance(ev, CellRan) and ev.final is not None:
            say(f"{pad}  cell ran FINAL in {ev.seconds:.2f} s: {escape(_short(ev.final, 120))}")
        elif isinstance(ev, CellRan):
            status = "[red]error[/red]" if ev.error else "[green]ok[/green]"
            extra = f", {ev.batched_rewrites} loop(s) batched" if ev.batched_rewrites else ""
            say(
                f"{pad}  cell {status} in {ev.seconds:.2f} s{extra}: "
                f"{escape(_short(ev.error or ev.stdout or '(no output)', 120))}"
            )
            if self.verbose and ev.stdout:
                say(escape(ev.stdout))
        elif isinstance(ev, SubCall):
            self._subcalls += 1
            if ev.query == "rlm" or self.verbose:
                say(
                    f"{pad}  [magenta]{ev.query}_query[/magenta] (depth {ev.depth}): "
                    f"{escape(_short(ev.prompt, 80))} → {escape(_short(ev.response or ev.error, 80))}"
                )
        elif isinstance(ev, ChildStart):
            say(f"{pad}[magenta]child RLM at depth {ev.depth}[/magenta]")
        elif isinstance(ev, Compacted):
            say(f"{pad}[yellow]compacted {ev.turns} turns: {ev.tokens_before:,} -> {ev.tokens_after:,} tokens[/yellow]")
        elif isinstance(ev, RunFinal):
            say(f"[bold green]done[/bold green]: {ev.stopped_reason} after {ev.iterations} turn(s), {ev.seconds:.1f} s")


class VerbosePrinter(ProgressDisplay):
    """What ``RLM(verbose=True)`` prints: every step in full, no live status line."""

    def __init__(self) -> None:
        super().__init__(verbose=True, live=False)
