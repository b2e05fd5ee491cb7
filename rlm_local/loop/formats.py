"""One prompt format per model, chosen once from its model card: chat messages for instruction-tuned
models, one REPL transcript for base models. The format decides everything that differs between the two:
the opening of a root conversation, how a reply is read, how cell output is fed back, how the turns and a
closing instruction are laid out, and how a sub-call is asked. Nothing else in the loop asks which
format a model uses.
"""

from __future__ import annotations

from typing import Any

from ..engines import Request
from ..errors import InputError
from . import prompts
from .parsing import ParsedReply, parse_reply
from .prompts import ContextInfo

# Tokens a chat template adds around each message (role markers, separators): an allowance, so that the
# conversation can keep its prompt budget from per-piece counts without rendering the whole prompt.
MESSAGE_OVERHEAD_TOKENS = 8

Turn = tuple[str, str]  # (the root's reply, the feedback it got)


# The ``constrain`` lever's grammar (GBNF) for a chat reply: one ```repl block (no ``` inside it) or one
# FINAL(...) line. Prose, a second block and a runaway after the block cannot be generated.
CHAT_REPLY_GRAMMAR = r"""root ::= code | final
code ::= "```repl\n" body "```"
body ::= ([^`] | "`" [^`] | "``" [^`])+
final ::= "FINAL(" [^\n]+ ")"
"""


class ChatFormat:
    """Instruction-tuned models: a system prompt, then alternating user/assistant messages."""

    name = "chat"
    reply_grammar: str | None = CHAT_REPLY_GRAMMAR

    def opening(self, question: str | None, info: ContextInfo, system: str, prologue: str | None) -> list[str]:
        """The fixed start of a root conversation, as the pieces the model will see: the system prompt, and
        the first turn (the user's ``prologue`` after the context's description)."""
        first = prompts.first_turn(question, info)
        return [system, f"{first}\n\n{prologue}" if prologue else first]

    def parse(self, reply: str) -> ParsedReply:
        return parse_reply(reply)

    def feedback(self, outputs: list[str], notes: list[str]) -> str:
        body = prompts.cell_feedback(outputs) if outputs else ""
        return "\n\n".join(part for part in (body, *notes) if part)

    def root_request(
        self, opening: list[str], turns: list[Turn], dropped: int, tail: str | None, sampling: dict[str, Any]
    ) -> Request:
        system, first = opening
        messages = [{"role": "system", "content": system}, {"role": "user", "content": first}]
        if dropped:
            messages.append(
                {
                    "role": "user",
                    "content": f"[{dropped} earlier turns omitted to fit the context "
                    "window; the variables they made still exist]",
                }
            )
            messages.append({"role": "assistant", "content": "Understood."})
        for reply, feedback in turns:
            messages.append({"role": "assistant", "content": reply})
            messages.append({"role": "user", "content": feedback})
        if tail:
            if messages[-1]["role"] == "user":
                messages[-1] = {"role": "user", "content": messages[-1]["content"] + "\n\n" + tail}
            else:
                messages.append({"role": "user", "content": tail})
        return Request.chat(messages, **sampling)

    def subcall(self, prompt: str, sampling: dict[str, Any]) -> Request:
        return Request.chat([{"role": "user", "content": prompt}], **sampling)


class CompletionFormat:
    """Base models: one text shaped like a REPL transcript with worked examples, which the model continues.
    The transcript ends inside an open ```python fence, so a reply is bare code."""

    name = "completion"
    reply_grammar: str | None = None  # the transcript already ends inside a code fence

    def opening(self, question: str | None, info: ContextInfo, system: str, prologue: str | None) -> list[str]:
        """A base model has no system prompt: ``system`` is not shown; the ``prologue`` is a line of the task."""
        task = prompts.completion_task(question, info)
        if prologue:
            task = task.replace("### Context:", f"### Note: {' '.join(prologue.split())}\n### Context:", 1)
        return [prompts.COMPLETION_PREAMBLE + task]

    def parse(self, reply: str) -> ParsedReply:
        return parse_reply(f"```python\n{reply}\n```")

    def feedback(self, outputs: list[str], notes: list[str]) -> str:
        return "\n\n".join(part for part in ("\n".join(outputs), *notes) if part)  # raw output under "Output:"

    def root_request(
        self, opening: list[str], turns: list[Turn], dropped: int, tail: str | None, sampling: dict[str, Any]
    ) -> Request:
        text = opening[0]
        if dropped:
            text += f"# ({dropped} earlier steps omitted; their variables still exist)\n"
        for reply, feedback in turns:
            text += reply.rstrip("\n") + "\n```\n" + prompts.completion_output(feedback)
        if tail:
            text += f"# {tail}\n"
        return Request.completion(text, stop=prompts.COMPLETION_STOP, **sampling)

    def subcall(self, prompt: str, sampling: dict[str, Any]) -> Request:
        # A question/answer frame on one line, or a base model rambles on (see prompts.SUBCALL_COMPLETION_STOP).
        return Request.completion(
            f"Question: {prompt.strip()}\nAnswer:", stop=prompts.SUBCALL_COMPLETION_STOP, **sampling
        )


PromptFormat = ChatFormat | CompletionFormat
_FORMATS: dict[str, PromptFormat] = {"chat": ChatFormat(), "completion": CompletionFormat()}


def format_named(name: str) -> PromptFormat:
    """The strategy for a card's (or an engine's) ``prompt_format``."""
    try:
        return _FORMATS[name]
    except KeyError:
        raise InputError(f"unknown prompt format {name!r}; use 'chat' or 'completion'") from None
