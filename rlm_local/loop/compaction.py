"""Compaction (``RLM(compaction=True)``, the reference library's option): when the root conversation reaches
``compaction_threshold_pct`` of the root's prompt budget (its window less the reply's room), the model
summarises its progress and the summary replaces the turns; the whole conversation so far, summaries
included, is put in the REPL as ``history`` (a list of ``{"role", "content"}`` messages; a summary has
``"summary": "true"``), so nothing the model saw is lost to its code; the note after the summary says so.
(The reference also names ``history`` in the system prompt from the start; here the prompt stays the same
until the first compaction, so a run behaves exactly as without compaction until its window fills.)

Without compaction the oldest turns are dropped to fit (conversation.py), silently for the model but for a
one-line note. A failed summary request leaves the conversation as it was (the drop still keeps it in
the window) and compaction is tried again at the next turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..runlog.events import Compacted
from . import final

if TYPE_CHECKING:
    from .run import Run

SUMMARY_REQUEST = (
    "Your conversation is about to outgrow your context window. Summarise your progress so far: which steps "
    "are done and which remain; every concrete intermediate result (numbers, values, names of REPL variables "
    "that hold results), copied exactly; and what your next action should be. Be concise (one to three "
    "paragraphs) and do not write code in this reply."
)

CONTINUE_NOTE = (
    "The conversation was compacted (TIMES so far): the message above is your own summary of it. Continue "
    "from there without redoing finished work; SHOW_VARS() lists your variables, and the REPL variable `history` "
    "holds the whole conversation so far (a list of messages). Your next action:"
)


@dataclass
class Compactor:
    threshold_pct: float
    count: int = 0

    def due(self, run: Run) -> bool:
        convo = run.convo
        return convo is not None and bool(convo.turns) and convo.tokens() >= self.threshold_pct * convo.budget_tokens

    def compact(self, run: Run, iteration: int) -> bool:
        """Summarise ``run``'s conversation now; False when the model could not (it stays as it was)."""
        convo, sandbox = run.convo, run.sandbox
        assert convo is not None and sandbox is not None  # compaction runs between turns of a started run
        before, replaced = convo.tokens(), len(convo.turns)
        request = convo.request(run.settings.root.root_sampling, tail=SUMMARY_REQUEST)
        result = run.call_root(request, iteration, compaction=True)
        summary = final.prose(result.text) if result.ok else ""
        if not summary.strip():
            return False
        self.count += 1
        convo.compact(summary.strip(), CONTINUE_NOTE.replace("TIMES", f"{self.count} time{'s' * (self.count > 1)}"))
        sandbox.add_context(convo.history, "history")
        run.log(
            Compacted(
                depth=run.depth,
                iteration=iteration,
                turns=replaced,
                tokens_before=before,
                tokens_after=convo.tokens(),
                summary=summary.strip(),
            )
        )
        return True
