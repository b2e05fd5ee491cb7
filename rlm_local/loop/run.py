"""One completion, top to bottom: the loop that turns a root model's replies into REPL cells until a final
answer or a budget ends it.

A ``Run`` is one (sub-)run of the loop: its conversation with the root model and its sandbox session.
``RLM.completion`` makes the depth-0 run; ``rlm_query`` makes a child one level deeper that shares the
parent's ``Budget``, usage and trajectory (one completion = one budget, whatever the depth).

Budgets hold to the second: every wait on an engine and every cell is bounded by the time left, a call
cut off by the time budget is reported as ``max_timeout`` (never as an engine failure) and its engine work
is still counted. After any budget stop the root is asked once for its best answer; that closing request
(and the cell or variable read that resolves it) gets ``FINAL_GRACE_SECONDS`` past the deadline, once per
completion, children included.

Small instruction models are steered back on track (steering.py): a runaway reply is cut, a repeated
turn gets an escalating nudge, and a prose reply that is plainly an answer is taken (final.plain_answer).

Around the loop: the reference's callbacks (hooks.py), compaction (compaction.py) and typed answers
(typed.py); the sub-call handlers the sandbox calls, tree-wide budget checks included, are subcalls.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .. import defaults
from ..engines import Request, Result, Usage
from ..errors import BudgetExceeded, SetupError
from ..errors import logger as _root_logger
from ..runlog.events import CellRan, ContextDescribed, Event, RootTurn, SubCall
from ..runlog.trajectory import Trajectory
from ..runlog.usage import UsageTracker
from ..sandbox import CellResult, Sandbox, SandboxError
from . import final, instructions, prompts
from .batching import rewrite_sibling_calls
from .budget import FINAL_GRACE_SECONDS, Budget
from .compaction import Compactor
from .conversation import Conversation
from .prompts import Context, ContextError, check_context, flatten_context
from .settings import Model, Outcome, Settings
from .steering import Steering
from .subcalls import SubCalls
from .toolkit import SOURCE as TOOLKIT_SOURCE
from .typed import AnswerFormat

__all__ = ["FINAL_GRACE_SECONDS", "STOP_REASONS", "Budget", "BudgetExceeded", "Model", "Outcome", "Run", "Settings"]
__all__ += ["SetupError", "ContextError", "check_context"]

logger = _root_logger.getChild("run")

STOP_REASONS = (
    "final",
    "max_iterations",
    "max_timeout",
    "max_tokens",
    "max_subcalls",
    "max_errors",
    "engine_error",
    "cancelled",
    "invalid_answer",  # response_format: the answers given never matched it before a budget ended the run
)
# A greedy root request that failed after this long is not sent again: it would compute the same reply for
# as long again (a timed-out 2,048-token reply on a CPU server was retried and timed out twice).
NO_RETRY_AFTER_SECONDS = 30.0
# The resample lever: a reply whose code repeats the cell that just ran is sampled again, warmer each time
# (greedy decoding gives the same reply to the same prompt; a note alone did not change it, issue 15).
RESAMPLE_TEMPERATURES = (0.7, 1.0)


class Run(SubCalls):
    """One (sub-)run: a conversation with the root model and a sandbox session, inside a shared budget."""

    def __init__(
        self,
        settings: Settings,
        budget: Budget,
        usage: UsageTracker,
        trajectory: Trajectory,
        run_id: str,
        depth: int = 0,
        top: bool = True,
    ) -> None:
        self.settings, self.budget, self.usage, self.trajectory = settings, budget, usage, trajectory
        self.run_id, self.depth, self.top = run_id, depth, top  # top: the completion's own run, not a child
        self.answer_format: AnswerFormat | None = None  # response_format (the top run only)
        self.invalid: Outcome | None = None  # the last final answer that did not match it
        pct = settings.compaction_threshold_pct
        self.compactor = Compactor(pct) if pct is not None else None
        self.convo: Conversation | None = None
        self.sandbox: Sandbox | None = None
        # A session's REPL outlives its runs: ``sandbox_provider(run, context)`` gives the context manager
        # to run in (a kept-alive sandbox is not closed by it). Children always open their own.
        self.sandbox_provider: Callable[[Run, Context], AbstractContextManager[Sandbox]] | None = None
        self._closing = False  # the closing request is under way: waits may use the grace
        self.evidence = final.Evidence()  # what this run observed and the answers it saw stated
        self._grounded: bool | None = None  # of the last answer checked (the ground lever)
        self._last_code: str | None = None  # the code of the last turn that ran (the resample lever)
        self._last_output = ""
        self._root_sampling = dict(settings.root.root_sampling)
        grammar = settings.root.format.reply_grammar
        if settings.levers.constrain and grammar and settings.root.engine.supports_grammar:
            self._root_sampling["grammar"] = grammar

    def child(self) -> Run:
        return Run(self.settings, self.budget, self.usage, self.trajectory, self.run_id, self.depth + 1, top=False)

    @property
    def tools(self) -> dict[str, Any]:
        s = self.settings
        return s.tools if self.top or s.child_tools is None else s.child_tools

    # ---- the loop -----------------------------------------------------------------------------------------
    def solve(self, context: Context, question: str | None) -> Outcome:
        s = self.settings
        info = prompts.describe_context(context, s.root.engine.count_tokens)
        self.log(ContextDescribed(depth=self.depth, metadata=info.to_dict()))
        system = instructions.system_text(
            prompts.system_prompt(
                s.output_limit,
                s.sub.context_length or defaults.CONTEXT_LENGTH,
                toolkit=s.levers.toolkit,
                one_block=s.levers.constrain,
            ),
            s.custom_system_prompt,
            instructions.tools_section(self.tools, s.tool_notes),
            s.orchestrator,
        )
        self.convo = Conversation.start(
            s.root.format,
            s.root.engine.count_tokens,
            question,
            info,
            s.output_limit,
            system,
            s.root.prompt_tokens,
            self._prologue(),
        )
        self.evidence.saw(f"{question or ''}\n{info.describe()}", printed=False)
        opener = self.sandbox_provider(self, context) if self.sandbox_provider else self.open_sandbox(context)
        with opener as self.sandbox:
            failures = 0  # consecutive turns whose cells all failed (max_errors)
            steer = Steering()  # repeats, prose answers, runaway replies (steering.py)
            for iteration in range(1, self.budget.max_iterations + 1):
                if reason := self.stop_reason():
                    return self._close(reason, iteration - 1)
                if self.compactor is not None and self.compactor.due(self):
                    self.compactor.compact(self, iteration)
                started = self._iteration_hook(iteration)
                result = self._root_turn(iteration)
                if result is None:
                    self._iteration_hook(iteration, started)
                    return self._close(self.stop_reason() or "engine_error", iteration)
                reply = self._trim(result, steer)
                if s.levers.resample:
                    reply = self._fresh(reply, iteration, steer)
                answer, feedback, failed = self._act(reply, iteration, steer)
                if answer is not None:
                    outcome, feedback = self._typed(Outcome(answer, "final", iteration, grounded=self._grounded))
                    if outcome is not None:
                        self._iteration_hook(iteration, started)
                        return outcome
                self.convo.add_turn(reply, steer.feedback(reply, feedback))
                self.evidence.outputs_seen = len(self.evidence.observed) - 1  # what this turn printed, now read
                self._iteration_hook(iteration, started)
                failures = failures + 1 if failed else 0
                if self.budget.max_errors is not None and failures >= self.budget.max_errors:
                    return self._close("max_errors", iteration)
            return self._close("max_iterations", self.budget.max_iterations)

    def _iteration_hook(self, iteration: int, started: float | None = None) -> float:
        """The iteration callbacks of the completion's own run (hooks.py); returns the time now."""
        now = time.monotonic()
        if self.top and started is None:
            self.settings.hooks.call("on_iteration_start", self.depth, iteration)
        elif self.top and started is not None:
            self.settings.hooks.call("on_iteration_complete", self.depth, iteration, now - started)
        return now

    def _typed(self, outcome: Outcome) -> tuple[Outcome | None, str]:
        """A final answer checked against ``response_format`` (typed.py): the outcome with the parsed value,
        or None and the note telling the root what failed (the run goes on)."""
        if self.answer_format is None:
            return outcome, ""
        parsed, error = self.answer_format.check(outcome.answer)
        if error is None:
            outcome.parsed, outcome.answer = parsed, self.answer_format.dump(parsed)
            return outcome, ""
        self.invalid = Outcome(outcome.answer, "invalid_answer", outcome.iterations, None, outcome.answer, error)
        logger.info("run %s: final answer does not match response_format: %s", self.run_id, error)
        return None, self.answer_format.retry_note(error)

    def finish_typed(self, outcome: Outcome) -> Outcome:
        """After a budget stop: the closing answer checked against ``response_format``, or the last invalid
        answer with ``stopped_reason="invalid_answer"`` when no answer matched."""
        if self.answer_format is None or outcome.stopped_reason == "final":
            return outcome
        if outcome.answer.strip():
            checked, _ = self._typed(outcome)
            if checked is not None:
                return checked
        return self.invalid if self.invalid is not None else outcome

    def _prologue(self) -> str | None:
        """Text after the context's description: the toolkit's hint (levers.py), then the user's prologue."""
        s = self.settings
        parts = [prompts.TOOLKIT_START if s.levers.toolkit else "", (s.user_prologue or "") if self.top else ""]
        return "\n\n".join(p for p in parts if p) or None

    def _root_turn(self, iteration: int) -> Result | None:
        """The root's next reply, or None when the engine failed (twice, or once slowly on a greedy
        request: see NO_RETRY_AFTER_SECONDS) or the budget ran out meanwhile."""
        assert self.convo is not None  # run() starts the conversation before the first turn
        request = self.convo.request(self._root_sampling)
        for attempt in range(2):  # one retry: a transient engine failure should not end the run
            started = time.monotonic()
            result = self._call_root(request, iteration, attempt=attempt)
            if result.ok:
                return result
            if self.stop_reason():  # cut off by the budget: not an engine failure, and no retry
                return None
            logger.warning(
                "run %s depth %d turn %d: root call failed (attempt %d): %s",
                self.run_id,
                self.depth,
                iteration,
                attempt + 1,
                result.error,
            )
            if request.sampling.grammar and "grammar" in (result.error or "").lower():
                # The engine takes grammars but not this one: the rest of the run goes unconstrained.
                logger.warning("run %s: the engine refused the reply grammar; replies are unconstrained", self.run_id)
                self._root_sampling.pop("grammar", None)
                request = self.convo.request(self._root_sampling)
                continue
            if request.sampling.greedy and time.monotonic() - started >= NO_RETRY_AFTER_SECONDS:
                return None  # the same greedy request would spend the same time again
        return None

    def _trim(self, result: Result, steer: Steering) -> str:
        """The reply as the loop keeps it: a runaway repetition cut (steering.py); notes for the model."""
        reply = steer.trim(result.text, result.finish_reason, self.settings.root.root_sampling.get("max_tokens"))
        if len(reply) < len(result.text):
            logger.info(
                "run %s depth %d: cut a runaway reply (%d -> %d characters)",
                self.run_id,
                self.depth,
                len(result.text),
                len(reply),
            )
        return reply

    def _act(self, reply: str, iteration: int, steer: Steering) -> tuple[str | None, str, bool]:
        """Run the reply's code; returns (final answer or None, feedback for the root, every cell failed)."""
        assert self.convo is not None  # run() starts the conversation before the first turn
        parsed = self.convo.parse(reply)
        if not parsed.code_blocks:
            if not parsed.has_final:
                # Prose only: taken when plainly an answer (steering.py), else ask for FINAL explicitly.
                answer = steer.prose_answer(reply)
                if answer is not None:
                    return self._checked(answer, reply)
                return None, self.convo.feedback([], [prompts.PROSE_NUDGE]), False
            steer.acted(0)
            answer = final.from_text(parsed, self._read)
            if answer is not None:
                return self._checked(answer, reply if parsed.final_var is None else "")
            return None, self.convo.feedback([_missing(parsed.final_var)]), True
        if self.settings.levers.resample and self._repeats_last(parsed.code_blocks):
            # Never the same cell twice in a row: its output is quoted back instead (see _fresh).
            steer.acted(0)
            quoted = self._last_output if len(self._last_output) <= 2000 else self._last_output[:2000] + "\n..."
            return None, self.convo.feedback([], [prompts.REPEATED_CELL.replace("OUTPUT", quoted)]), False
        cells: list[CellResult] = []
        outputs: list[str] = []
        for code in parsed.code_blocks:
            if self.stop_reason():
                break
            cell = self._run_cell(code, iteration)
            cells.append(cell)
            self.evidence.saw(_cell_text(cell))
            if cell.final is not None:
                break
            outputs.append(_cell_text(cell))
        steer.acted(len(cells))
        self._last_code, self._last_output = _code_key(parsed.code_blocks), "\n".join(outputs)
        answer = final.after_cells(parsed, cells, self._read)
        if answer is not None:
            return self._checked(answer, reply)
        if parsed.final_var is not None:
            outputs.append(_missing(parsed.final_var))
        notes = [prompts.IGNORED_FINAL] if parsed.final_answer is not None else []
        self.evidence.claim(parsed.final_answer)
        failed = bool(cells) and all(c.error is not None for c in cells)
        return None, self.convo.feedback(outputs, notes), failed

    def _checked(self, answer: str, written: str) -> tuple[str | None, str, bool]:
        """A final answer, unless (``ground`` lever) the model wrote it out and the run never observed it, gave
        it before reading any output of its code, or copied a number from a line while another printed line
        matches the question better: then it is sent back once with a request to check it; taken the next
        time (flagged when ungrounded)."""
        self._grounded = self.evidence.supported(answer, written)
        if not self.settings.levers.ground or self.evidence.questioned:
            return answer, "", False
        closer = self.evidence.closer_line(answer) if final.written_out(answer, written) else None
        if not self._grounded:
            note = prompts.UNGROUNDED
        elif not self.evidence.outputs_seen:
            note = prompts.UNSEEN_FINAL
        elif closer is not None:
            note = prompts.CLOSER_LINE.replace("LINE", closer[:300])
        else:
            return answer, "", False
        self.evidence.questioned = True
        self.evidence.claim(answer)
        assert self.convo is not None
        return None, self.convo.feedback([], [note.replace("ANSWER", repr(answer)[:200])]), False

    def _repeats_last(self, code_blocks: list[str]) -> bool:
        return bool(code_blocks) and _code_key(code_blocks) == self._last_code

    def _fresh(self, reply: str, iteration: int, steer: Steering) -> str:
        """The ``resample`` lever: a reply whose code repeats the cell that just ran is sampled again, warmer
        each time (RESAMPLE_TEMPERATURES, a seed per attempt); the first reply with other code is kept. If
        every sample repeats, the reply stays and ``_act`` quotes the earlier output back instead of running it."""
        assert self.convo is not None
        if not self._repeats_last(self.convo.parse(reply).code_blocks):
            return reply
        for attempt, temperature in enumerate(RESAMPLE_TEMPERATURES, 1):
            if self.stop_reason():
                break
            sampling = {**self._root_sampling, "temperature": temperature, "seed": iteration * 1000 + attempt}
            result = self._call_root(self.convo.request(sampling), iteration, resample=attempt)
            if not result.ok:
                break
            candidate = self._trim(result, steer)
            if not self._repeats_last(self.convo.parse(candidate).code_blocks):
                return candidate
        return reply

    def _close(self, reason: str, iterations: int) -> Outcome:
        """A budget ended the run: ask the root once for its best answer from what it has seen; with the
        ``recover`` lever, a missing or ungrounded answer gives way to the best candidate the run observed."""
        if reason == "cancelled":  # nobody is waiting for a best answer
            return Outcome("", reason, iterations, source="none")
        self._closing = True
        assert self.convo is not None  # run() starts the conversation before the first turn
        logger.info(
            "run %s depth %d: %s after %d turns; asking for a final answer", self.run_id, self.depth, reason, iterations
        )
        self.convo.add_budget_stop(reason)
        result = self._call_root(self.convo.request(self._root_sampling), iterations + 1, final_request=True)
        answer: str | None = None
        if result.ok:
            parsed = self.convo.parse(result.text)
            answer = final.from_text(parsed, self._read, closing=True)
            if answer is None:  # the model answered in code anyway: run only the code that gives the answer
                cells = [
                    self._run_cell(code, iterations + 1)
                    for code in parsed.code_blocks
                    if "FINAL" in code or final.ANSWER_VAR in code
                ]
                answer = final.after_cells(parsed, cells, self._read) if cells else None
            # No final answer in the reply: its prose is the best partial answer, never its code.
            answer = (answer if answer is not None else final.prose(result.text)).strip()
        supported = bool(answer) and self.evidence.supported(answer or "", result.text)
        if self.settings.levers.recover and not supported:
            best = self.evidence.best()
            if best is not None and (not answer or best[1]):
                logger.info("run %s depth %d: recovered the answer %r", self.run_id, self.depth, best[0][:80])
                return Outcome(best[0], reason, iterations, source="recovered", grounded=best[1])
        if not answer:
            return Outcome("", reason, iterations, source="none")
        return Outcome(answer, reason, iterations, source="closing", grounded=supported)

    def answer_directly(self, context: Context, question: str | None) -> str:
        """The reference's rule for an RLM created at ``depth >= max_depth``: it is a plain model call."""
        text = flatten_context(context) if question is None else f"{question}\n\n{flatten_context(context)}"
        root = self.settings.root
        (result,) = self._submit(root, [root.format.subcall(text, root.sub_sampling)], "root", self.depth)
        self.log(
            SubCall(
                depth=self.depth,
                query="llm",
                prompt=text,
                response=result.text,
                error=result.error,
                usage=result.usage,
                seconds=result.usage.seconds,
            )
        )
        return result.text.strip()

    # ---- steps ----------------------------------------------------------------------------------------------
    def _call_root(self, request: Request, iteration: int, **fields: Any) -> Result:
        """One root-model call through the scheduler, bounded by the budget, counted and logged."""
        started = time.monotonic()
        (result,) = self._submit(self.settings.root, [request], "root", self.depth)
        seconds = time.monotonic() - started
        if result.ok:
            self.budget.record_turn(seconds, result.usage.completion_tokens)
        self.log(
            RootTurn(
                depth=self.depth,
                iteration=iteration,
                prompt_tokens=result.usage.prompt_tokens,
                cached_tokens=result.usage.cached_tokens,
                completion_tokens=result.usage.completion_tokens,
                reply=result.text,
                error=result.error,
                seconds=round(seconds, 3),
                dropped_turns=self.convo.dropped if self.convo is not None else 0,
                **fields,
            )
        )
        return result

    call_root = _call_root  # for compaction.py

    def _run_cell(self, code: str, iteration: int) -> CellResult:
        rewrites = 0
        code_to_run = code
        if self.settings.implicit_batching:
            code_to_run, rewrites = rewrite_sibling_calls(
                code, max_prompts=self.settings.sandbox_limits.max_prompts_per_call
            )
        assert self.sandbox is not None  # run() opens the sandbox before the first turn
        cell = self.sandbox.run(code_to_run, wall_seconds=self._wait_limit(), deadline=self._cell_deadline())
        self.log(
            CellRan(
                depth=self.depth,
                iteration=iteration,
                code=code,
                batched_rewrites=rewrites,
                stdout=cell.stdout,
                error=cell.error,
                final=cell.final,
                timed_out=cell.timed_out,
                restored=cell.restored,
                seconds=round(cell.seconds, 3),
            )
        )
        return cell

    def _read(self, name: str) -> CellResult:
        """A REPL variable, read directly (final.py resolves FINAL_VAR and the answer dict with it)."""
        assert self.sandbox is not None  # run() opens the sandbox before the first turn
        return self.sandbox.read_variable(name, wall_seconds=self._wait_limit(), deadline=self._cell_deadline())

    def _cell_deadline(self) -> float | None:
        """When a cell must end, time waiting on its sub-calls included: the time budget plus half the
        grace (the whole grace for the closing request's cells, the closing request gets the rest). A
        cell's wall limit alone does not count sub-call waits, so a cell that waited on a sub-call until
        the deadline and then kept computing would run that long again (2.8 s past a 3 s budget,
        measured); the sandbox stops it here instead and rolls the session back, variables kept."""
        left = self.budget.time_left()
        if left is None:
            return None
        return time.monotonic() + max(0.0, left) + self.budget.final_grace * (1.0 if self._closing else 0.5)

    def open_sandbox(
        self,
        context: Context,
        llm_handler: Callable[[list[str]], list[str]] | None = None,
        rlm_handler: Callable[..., str] | None = None,
        rlm_batch_handler: Callable[[list[str], list[Any]], list[str]] | None = None,
    ) -> Sandbox:
        """A new REPL session on ``context`` with this run's limits and tools; sub-calls go to this run
        unless other handlers are given (a persistent REPL routes them to whichever run uses it)."""
        try:
            sandbox = Sandbox(
                context=context,
                limits=self.settings.sandbox_limits,
                llm_handler=llm_handler or self.llm_query,
                rlm_handler=rlm_handler or self.rlm_query,
                rlm_batch_handler=rlm_batch_handler or (None if rlm_handler else self.rlm_query_batched),
                tools=self.tools,
                pool=self.settings.sandbox_pool,
                # The toolkit lever's helpers: model-level code, run under the same guards as a cell.
                prelude=TOOLKIT_SOURCE if self.settings.levers.toolkit else None,
            )
        except SandboxError as exc:
            raise SetupError(f"could not start the sandbox: {exc}") from exc
        self.budget.record_sandbox_start(sandbox.start_seconds)
        return sandbox

    # ---- budgets and accounting -----------------------------------------------------------------------------
    def stop_reason(self) -> str | None:
        return self.budget.stop_reason(self.usage.total_tokens)

    def _wait_limit(self) -> float | None:
        return self.budget.closing_limit() if self._closing else self.budget.wait_limit()

    def _submit(self, model: Model, requests: list[Request], role: str, depth: int) -> list[Result]:
        """Requests through the model's scheduler, bounded by the time left, with their usage counted;
        work the engine finishes after we stopped waiting is counted when it ends."""

        def count(usage: Usage) -> None:
            self.usage.add(usage, model.name, depth, role)

        # Every request carries the run id, so a router in front of several servers keeps the run on one.
        requests = [r.with_session(self.run_id) for r in requests]
        results = model.scheduler.submit(requests, self.run_id, timeout=self._wait_limit(), on_late_usage=count)
        for result in results:
            if result.ok and result.usage.calls == 0:  # the scheduler answered from its memo: no engine work
                self.usage.add_memo_hit()
            count(result.usage)
        return results

    def log(self, event: Event) -> None:
        self.trajectory.log(event)


def _cell_text(cell: CellResult) -> str:
    parts = [cell.stdout.rstrip("\n")] if cell.stdout.strip() else []
    if cell.error:
        parts.append(cell.error.rstrip("\n"))
    if cell.restored:
        parts.append("[the cell was stopped at a limit; variables are as they were before it ran]")
    return "\n".join(parts) or "(no output)"


def _code_key(code_blocks: list[str]) -> str:
    """Code compared for repeats: blocks joined, each line's trailing space and blank lines ignored."""
    return "\n".join(line.rstrip() for block in code_blocks for line in block.splitlines() if line.strip())


def _missing(name: str | None) -> str:
    return f"NameError: FINAL_VAR: no variable named {name!r}; define it first"
