"""The root model's view of a run, kept inside the model's prompt budget.

The layout (chat messages or a base-model transcript) belongs to the model's prompt format (formats.py).
Old turns are dropped (with a note) when the prompt would outgrow the budget; the REPL keeps every
variable, so nothing is lost but the model's view of old output. With compaction (compaction.py) the turns
are replaced by the model's own summary before that happens; ``messages()`` is the whole conversation as
it went, summaries included, whatever the model sees now. Each piece of text is tokenised once,
when it joins the conversation, so a root turn is rendered and tokenised once: by the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..engines import Request
from . import prompts
from .formats import MESSAGE_OVERHEAD_TOKENS, PromptFormat
from .parsing import ParsedReply
from .prompts import ContextInfo


class Conversation:
    def __init__(
        self,
        fmt: PromptFormat,
        opening: list[str],
        count_tokens: Callable[[str], int],
        feedback_chars: int,
        budget_tokens: int,
    ) -> None:
        self.fmt = fmt
        self.opening = opening
        self.count_tokens = count_tokens
        self.turns: list[tuple[str, str]] = []  # (reply, feedback)
        self.turn_tokens: list[int] = []  # each turn's tokens, counted once
        self.tail: str | None = None  # a closing instruction (budget stop)
        self.dropped = 0  # turns the last request left out to fit the budget
        self.history: list[dict[str, str]] = [  # every message as it went (compaction keeps it for the REPL)
            {"role": role, "content": text} for role, text in zip(("system", "user")[-len(opening) :], opening)
        ]
        self.feedback_chars = feedback_chars
        self.budget_tokens = budget_tokens
        self.opening_tokens = sum(self._tokens(piece) for piece in opening)

    @classmethod
    def start(
        cls,
        fmt: PromptFormat,
        count_tokens: Callable[[str], int],
        question: str | None,
        info: ContextInfo,
        output_limit: int,
        system: str,
        budget_tokens: int,
        prologue: str | None = None,
    ) -> Conversation:
        """``system``: the whole system prompt (chat models); ``prologue``: the user's text after the
        context's description (the reference's ``user_prologue``)."""
        feedback_chars = min(output_limit, budget_tokens)  # about a quarter of the budget, in characters
        opening = fmt.opening(question, info, system, prologue)
        return cls(fmt, opening, count_tokens, feedback_chars, budget_tokens)

    def parse(self, reply: str) -> ParsedReply:
        return self.fmt.parse(reply)

    def feedback(self, outputs: list[str], notes: Sequence[str] = ()) -> str:
        """What the root reads after its code ran: each cell's output (clipped to the model's budget) and notes."""
        share = max(200, self.feedback_chars // max(1, len(outputs)))
        clipped = [
            o if len(o) <= share else o[:share] + f"\n... [truncated: {len(o):,} characters in all]" for o in outputs
        ]
        return self.fmt.feedback(clipped, list(notes))

    def add_turn(self, reply: str, feedback: str) -> None:
        self.turns.append((reply, feedback))
        self.turn_tokens.append(self._tokens(reply) + self._tokens(feedback))
        self.history += [{"role": "assistant", "content": reply}, {"role": "user", "content": feedback}]

    def add_budget_stop(self, reason: str) -> None:
        self.tail = prompts.ASK_FOR_FINAL.replace("BUDGET", reason.removeprefix("max_"))

    def tokens(self) -> int:
        """The prompt's tokens with every current turn kept (what compaction compares with the budget)."""
        return self.opening_tokens + sum(self.turn_tokens)

    def compact(self, summary: str, note: str) -> None:
        """Replace the turns by the model's ``summary`` of them and a ``note`` to carry on."""
        self.turns, self.turn_tokens = [], []
        self.add_turn(summary, note)
        self.history[-2]["summary"] = "true"  # marks the summary among the messages in `history`

    def request(self, sampling: dict[str, Any], tail: str | None = None) -> Request:
        """The next root request: the newest turns that fit the budget (always the opening and the tail;
        ``tail`` instead of the budget stop's, for a one-off instruction such as compaction's)."""
        tail = tail or self.tail
        used = self.opening_tokens + (self._tokens(tail) if tail else 0)
        keep = 0
        for tokens in reversed(self.turn_tokens):
            if used + tokens > self.budget_tokens:
                break
            used += tokens
            keep += 1
        turns = self.turns[len(self.turns) - keep :]
        self.dropped = len(self.turns) - keep
        return self.fmt.root_request(self.opening, turns, self.dropped, tail, sampling)

    def _tokens(self, text: str) -> int:
        return self.count_tokens(text) + MESSAGE_OVERHEAD_TOKENS
