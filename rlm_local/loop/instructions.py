"""What the root is told beyond the REPL protocol: the reference library's prompt options.

- ``custom_system_prompt`` REPLACES the system prompt, as in the reference. A ``{custom_tools_section}``
  slot in it (the reference's templates have one) gets the tools list; a prompt without the slot gets the
  list appended. Braces are never interpreted otherwise: a literal ``{`` must not crash (the reference's
  ``str.format`` did), and the reference's doubled ``{{``/``}}`` are read as it meant them.
- ``orchestrator=True`` appends advice to plan and delegate (our wording of the reference's addendum).
- (compaction tells the root about ``history`` when it compacts, compaction.py; ``response_format``'s line goes
  with the question, typed.py).
- ``user_prologue`` is text from the user placed after the context's description, before the first turn.
Base models (the completion format) have no system prompt: of these, only the prologue reaches them.
"""

from __future__ import annotations

from typing import Any

from . import prompts

TOOLS_SLOT = "{custom_tools_section}"

ORCHESTRATOR = (
    "Work as an orchestrator, not a solver. Once you have looked at `context`, plan: say how the task splits "
    "into REPL steps and sub-calls, then run one step per turn, printing a small sample of each result to "
    "check it. Push reading, summarising and classifying of long text into llm_query / llm_query_batched "
    "calls rather than printing it; give sub-models clean, focused inputs and ask for short, structured "
    "answers you can combine in code. Prefer one batched call over a loop of single calls. If turns run "
    "short before you have a confirmed answer, submit your best answer rather than none."
)


def tools_section(tools: dict[str, Any], notes: dict[str, str]) -> str:
    """The tools list (``notes``: descriptions from ``{"tool": ..., "description": ...}`` entries)."""
    return prompts.tools_prompt(tools, notes) if tools else ""


def system_text(
    default: str,
    custom: str | None,
    tools: str,
    orchestrator: bool,
) -> str:
    """The whole system prompt of a chat-format root."""
    if custom:
        text = custom.replace("{{", "{").replace("}}", "}") if TOOLS_SLOT in custom else custom
        if TOOLS_SLOT in text:
            text, tools = text.replace(TOOLS_SLOT, f"\n{tools}" if tools else ""), ""
    else:
        text = default
    extras = [tools, ORCHESTRATOR if orchestrator else ""]
    return "\n\n".join(part for part in (text, *extras) if part)
