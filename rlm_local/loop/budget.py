"""The budgets of one completion, shared by its child runs: turns, time, tokens, sub-calls, errors.

A budget that runs out stops the run at its next check (run.py asks the root once for its best answer);
one that refuses a sub-call tells the model's code so. The root turns of the whole tree are timed here, so a
child run is refused before it starts when the time or tokens left cannot cover one turn (subcalls.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .. import defaults
from ..errors import BudgetExceeded

FINAL_GRACE_SECONDS = defaults.FINAL_GRACE_SECONDS  # the closing request may run this long past max_timeout


@dataclass
class Budget:
    """Limits and counters of one completion(), shared by its child runs. Thread-safe where it counts."""

    max_iterations: int
    max_timeout: float | None = None
    max_tokens: int | None = None
    max_subcalls: int | None = None
    max_errors: int | None = None  # consecutive failing cells of one (sub-)run
    final_grace: float = FINAL_GRACE_SECONDS
    started: float = field(default_factory=time.monotonic)
    subcalls: int = 0
    exhausted: str | None = None  # a budget that refused a sub-call ends the run at the next check
    turns_timed: int = 0  # root turns of the whole tree, their seconds and reply tokens: a child turn's cost
    turn_seconds: float = 0.0
    reply_tokens: int = 0
    sandbox_starts: list[float] = field(default_factory=list)  # seconds each run's sandbox took to start
    children: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # depth -> (tokens, seconds) each
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_child(self, depth: int, tokens: int, seconds: float) -> None:
        with self.lock:
            self.children.setdefault(depth, []).append((tokens, seconds))

    def child_cost(self, depth: int) -> tuple[int, float] | None:
        """The mean (tokens, seconds) of the finished child runs at ``depth``: what the next one will cost."""
        with self.lock:
            done = self.children.get(depth)
            if not done:
                return None
            return sum(t for t, _ in done) // len(done), sum(s for _, s in done) / len(done)

    def record_sandbox_start(self, seconds: float) -> None:
        with self.lock:
            self.sandbox_starts.append(seconds)

    def child_seconds(self) -> float | None:
        """What a child run costs at least: a sandbox start and one root turn (the tree's means so far)."""
        turn = self.mean_turn_seconds()
        with self.lock:
            start = sum(self.sandbox_starts) / len(self.sandbox_starts) if self.sandbox_starts else 0.0
        return None if turn is None else turn + start

    def record_turn(self, seconds: float, reply_tokens: int) -> None:
        with self.lock:
            self.turns_timed += 1
            self.turn_seconds += seconds
            self.reply_tokens += reply_tokens

    def mean_turn_seconds(self) -> float | None:
        with self.lock:
            return self.turn_seconds / self.turns_timed if self.turns_timed else None

    def mean_reply_tokens(self) -> int | None:
        with self.lock:
            return self.reply_tokens // self.turns_timed if self.turns_timed else None

    def time_left(self) -> float | None:
        return None if self.max_timeout is None else self.started + self.max_timeout - time.monotonic()

    def wait_limit(self) -> float | None:
        """How long an engine call or a cell may take now: the time left (never negative), or no limit."""
        left = self.time_left()
        return None if left is None else max(0.0, left)

    def closing_limit(self) -> float | None:
        """The same for the closing request after a budget stop: up to the deadline plus the grace."""
        left = self.time_left()
        return None if left is None else max(0.0, left + self.final_grace)

    def stop_reason(self, tokens_used: int) -> str | None:
        if self.exhausted:
            return self.exhausted
        left = self.time_left()
        if left is not None and left <= 0:
            return "max_timeout"
        if self.max_tokens is not None and tokens_used >= self.max_tokens:
            return "max_tokens"
        if self.max_subcalls is not None and self.subcalls >= self.max_subcalls:
            return "max_subcalls"
        return None

    def cancel(self) -> None:
        """Stop the run at its next check (the caller went away): no closing request, sub-calls refused."""
        self.exhausted = "cancelled"

    def reserve_subcalls(self, count: int, tokens_used: int) -> None:
        """Count ``count`` sub-calls against the budget, or raise BudgetExceeded (shown to the code)."""
        with self.lock:
            if self.max_subcalls is not None and self.subcalls + count > self.max_subcalls:
                left = self.max_subcalls - self.subcalls
                if left <= 0:
                    self.exhausted = "max_subcalls"
                    raise BudgetExceeded(
                        f"max_subcalls budget ({self.max_subcalls}) used up; call FINAL with what you have"
                    )
                raise BudgetExceeded(
                    f"max_subcalls budget: {count} sub-calls requested but only {left} of "
                    f"{self.max_subcalls} left; ask fewer"
                )
            self.subcalls += count
        reason = self.stop_reason(tokens_used)
        if reason is not None and reason != "max_subcalls":
            raise BudgetExceeded(f"{reason} budget used up; call FINAL with what you have")
