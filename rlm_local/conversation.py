"""The root model's view of a run: chat messages for instruction-tuned models, or one growing REPL
transcript for base models, kept inside the model's prompt budget."""
from __future__ import annotations

from typing import Any

from . import prompts
from .engines import Engine, Request
from .parsing import ParsedReply, parse_reply
from .prompts import ContextInfo


class Conversation:
    """The root's view: chat messages for instruction-tuned models, or one growing transcript for base
    models. Old turns are dropped (with a note) when the prompt would outgrow the model's budget; the
    REPL keeps every variable, so nothing is lost but the model's view of old output."""

    def __init__(self, engine: Engine, head: list[dict[str, str]] | str, feedback_chars: int,
                 budget_tokens: int) -> None:
        self.engine = engine
        self.head = head
        self.turns: list[tuple[str, str]] = []  # (reply, feedback)
        self.tail: str | None = None  # a closing instruction (budget stop)
        self.feedback_chars = feedback_chars
        self.budget_tokens = budget_tokens

    @classmethod
    def start(cls, engine: Engine, question: str | None, info: ContextInfo, output_limit: int,
              custom_system: str | None, budget_tokens: int, sub_context_tokens: int) -> "Conversation":
        feedback_chars = min(output_limit, budget_tokens)  # about a quarter of the budget, in characters
        if engine.prompt_format == "completion":
            return cls(engine, prompts.COMPLETION_PREAMBLE + prompts.completion_task(question, info),
                       feedback_chars, budget_tokens)
        head = [{"role": "system", "content": prompts.system_prompt(output_limit, sub_context_tokens, custom_system)},
                {"role": "user", "content": prompts.first_turn(question, info)}]
        return cls(engine, head, feedback_chars, budget_tokens)

    def parse(self, reply: str) -> ParsedReply:
        # The completion transcript ends inside an open ```python fence, so a base model's reply is bare code.
        if isinstance(self.head, str):
            return parse_reply(f"```python\n{reply}\n```")
        return parse_reply(reply)

    def feedback(self, outputs: list[str], notes: list[str] = ()) -> str:
        """What the root reads after its code ran: each cell's output (clipped to the model's budget) and notes."""
        share = max(200, self.feedback_chars // max(1, len(outputs)))
        clipped = [o if len(o) <= share else o[:share] + f"\n... [truncated: {len(o):,} characters in all]"
                   for o in outputs]
        if isinstance(self.head, str):  # the transcript shows raw output under "Output:"
            body = "\n".join(clipped)
        else:
            body = prompts.cell_feedback(clipped) if clipped else ""
        return "\n\n".join(part for part in (body, *notes) if part)

    def add_turn(self, reply: str, feedback: str) -> None:
        self.turns.append((reply, feedback))

    def add_budget_stop(self, reason: str) -> None:
        self.tail = prompts.ASK_FOR_FINAL.replace("BUDGET", reason.removeprefix("max_"))

    def request(self, sampling: dict[str, Any]) -> Request:
        keep = len(self.turns)
        while True:
            req = self._build(keep, sampling)
            if keep == 0 or self.engine.count_tokens(self.engine.render(req)) <= self.budget_tokens:
                return req
            keep -= 1

    def _build(self, keep: int, sampling: dict[str, Any]) -> Request:
        turns = self.turns[len(self.turns) - keep:]
        dropped = len(self.turns) - keep
        if isinstance(self.head, str):
            text = self.head
            if dropped:
                text += f"# ({dropped} earlier steps omitted; their variables still exist)\n"
            for reply, feedback in turns:
                text += reply.rstrip("\n") + "\n```\n" + prompts.completion_output(feedback)
            if self.tail:
                text += f"# {self.tail}\n"
            return Request.completion(text, stop=prompts.COMPLETION_STOP, **sampling)
        messages = list(self.head)
        if dropped:
            messages.append({"role": "user", "content": f"[{dropped} earlier turns omitted to fit the context "
                                                        "window; the variables they made still exist]"})
            messages.append({"role": "assistant", "content": "Understood."})
        for reply, feedback in turns:
            messages.append({"role": "assistant", "content": reply})
            messages.append({"role": "user", "content": feedback})
        if self.tail:
            if messages[-1]["role"] == "user":
                messages[-1] = {"role": "user", "content": messages[-1]["content"] + "\n\n" + self.tail}
            else:
                messages.append({"role": "user", "content": self.tail})
        return Request.chat(messages, **sampling)
