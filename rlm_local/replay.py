"""``rlm-local replay trajectory.jsonl``: re-run a recorded run with the recorded model replies, through the
real sandbox, to reproduce a bug or re-score a run after a code change.

A trajectory (``trajectory_path=``, ``--trajectory``, the service's run logs) holds every root reply and
sub-call response whole, the settings and the context's sha256, but not the context: replay takes it again
(``--context``) and checks the sha256. The replay engine answers each root request with the next recorded
root reply (compaction summaries from their own queue) and each sub-call by its prompt, with the recorded
token usage, so token budgets stop where they did; time budgets are not replayed (no model is waiting).
Where the code now does something else the run may ask for a reply the recording does not have: that
request fails (``stopped_reason="engine_error"``) and the report says where the runs diverged. Children
replay one at a time; a run whose children ran concurrently replays exactly only if it was recorded with
``max_concurrent_subcalls=1`` (their turns interleave in the file).

A file from another trajectory format, or a damaged one, is refused with one line (ReplayError).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engines import Engine, Request, Result, Usage
from .errors import ReplayError
from .loop import prompts
from .loop.compaction import SUMMARY_REQUEST
from .runlog.events import TRAJECTORY_VERSION, clip
from .runlog.trajectory import context_digest

CLIP = 8000  # the trajectory's clip of long text fields (Trajectory.max_field_chars)


@dataclass
class Recording:
    """One recorded run, as replay needs it."""

    run_id: str
    config: dict[str, Any]
    question: str | None
    context_sha256: str | None
    turns: deque[dict[str, Any]] = field(default_factory=deque)  # root replies, in order
    summaries: deque[dict[str, Any]] = field(default_factory=deque)  # compaction replies
    subcalls: dict[str, deque[dict[str, Any]]] = field(default_factory=lambda: defaultdict(deque))
    cells: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None


def load(path: str | Path, run_id: str | None = None) -> Recording:
    """The run ``run_id`` (default: the last one) of a trajectory file, or ReplayError in one line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayError(f"cannot read {path}: {exc}") from None
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            raise ReplayError(f"{path}:{number}: not a JSON line: the file is damaged") from None
        if not isinstance(event, dict) or "event" not in event:
            raise ReplayError(f"{path}:{number}: not a trajectory event: the file is damaged")
        events.append(event)
    starts = [e for e in events if e["event"] == "run_start"]
    if not starts:
        raise ReplayError(f"{path}: no run in this file (no run_start event)")
    start = starts[-1] if run_id is None else next((e for e in starts if e.get("run_id") == run_id), None)
    if start is None:
        raise ReplayError(f"{path}: no run {run_id!r}; runs: {', '.join(str(e.get('run_id')) for e in starts)}")
    version = start.get("version")
    if version != TRAJECTORY_VERSION:
        made = f"trajectory format {version}" if version is not None else "an rlm-local without replay (no format)"
        raise ReplayError(
            f"{path} was written by {made}; this rlm-local replays format {TRAJECTORY_VERSION} only: record the run again"
        )
    return _recording(start, [e for e in events if e.get("run_id") == start.get("run_id")])


def _recording(start: dict[str, Any], events: list[dict[str, Any]]) -> Recording:
    rec = Recording(
        start.get("run_id", ""), start.get("config") or {}, start.get("question"), start.get("context_sha256")
    )
    for e in events:
        kind = e["event"]
        if kind == "root_turn":
            (rec.summaries if e.get("compaction") else rec.turns).append(e)
        elif kind == "subcall" and e.get("query") == "llm":
            rec.subcalls[e.get("prompt") or ""].append(e)
        elif kind == "cell":
            rec.cells.append(e)
        elif kind == "final":
            rec.final = e
    return rec


class ReplayEngine(Engine):
    """Answers from a recording: root requests in recorded order, sub-calls by prompt."""

    backend = "replay"

    def __init__(self, rec: Recording, model_name: str, prompt_format: str, context_length: int) -> None:
        self.rec, self.model_name, self.context_length = rec, model_name, context_length
        self.prompt_format = "completion" if prompt_format == "completion" else "chat"
        self.missing: list[str] = []  # requests the recording had no reply for

    def generate(self, requests: list[Request]) -> list[Result]:
        return [self._one(r) for r in requests]

    def _one(self, request: Request) -> Result:
        if _is_root(request):
            summary = SUMMARY_REQUEST in (request.prompt or (request.messages or [{}])[-1].get("content", ""))
            queue, what = (self.rec.summaries, "compaction summary") if summary else (self.rec.turns, "root turn")
            if not queue:
                return self._missing(f"the recording has no more {what}s")
            e = queue.popleft()
            usage = Usage(1, e.get("prompt_tokens") or 0, None, e.get("completion_tokens") or 0)
            return Result(text=e.get("reply") or "", usage=usage) if e.get("error") is None else _failed(e, usage)
        prompt = _subcall_prompt(request)
        answers = self.rec.subcalls.get(clip(prompt, CLIP) or "")
        if not answers:
            return self._missing(f"no recorded sub-call for the prompt {prompt[:60]!r}")
        e = answers.popleft()
        u = e.get("usage") or {}
        usage = Usage(1, u.get("prompt_tokens") or 0, None, u.get("completion_tokens") or 0)
        return Result(text=e.get("response") or "", usage=usage) if e.get("error") is None else _failed(e, usage)

    def _missing(self, why: str) -> Result:
        self.missing.append(why)
        return Result.failed(f"replay: {why}")


def _failed(event: dict[str, Any], usage: Usage) -> Result:
    return Result(text="", finish_reason="error", usage=usage, error=f"replay: recorded failure: {event['error']}")


def _is_root(request: Request) -> bool:
    if request.messages is not None:
        return request.messages[0]["role"] == "system"
    return (request.prompt or "").startswith(prompts.COMPLETION_PREAMBLE[:200])


def _subcall_prompt(request: Request) -> str:
    if request.messages is not None:
        return request.messages[-1]["content"]
    text = request.prompt or ""
    return text.removeprefix("Question: ").removesuffix("\nAnswer:")


def read_replay_context(path: str, rec: Recording) -> Any:
    """The context from ``path`` (text, PDF, a directory; or JSON for a list/dict context), checked
    against the recorded sha256."""
    from .documents import read_context

    text = read_context(path)
    candidates: list[Any] = [text]
    try:
        candidates.append(json.loads(text))
    except ValueError:
        pass
    for context in candidates:
        if rec.context_sha256 is None or context_digest(context) == rec.context_sha256:
            return context
    raise ReplayError(f"{path} is not the context of run {rec.run_id} (its sha256 differs from the recorded one)")


@dataclass
class Report:
    run_id: str
    recorded_answer: str | None
    recorded_stop: str | None
    answer: str
    stopped_reason: str
    same_answer: bool
    cells_recorded: int
    cells_replayed: int
    first_difference: str | None  # the first cell whose output or error changed, or a missing reply

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def replay(path: str | Path, context_path: str, run_id: str | None = None, trajectory: str | None = None) -> Report:
    """Replay a recorded run (see the module docstring); ``trajectory``: write the replay's own events there."""
    from .rlm import RLM

    rec = load(path, run_id)
    context = read_replay_context(context_path, rec)
    c = rec.config
    root = ReplayEngine(rec, c.get("model") or "replay", c.get("prompt_format", "chat"), c.get("context_length") or 0)
    sub = root
    if c.get("sub_model") and c.get("sub_model") != c.get("model"):
        sub = ReplayEngine(rec, c["sub_model"], c.get("sub_prompt_format", "chat"), c.get("sub_context_length") or 0)
    options = {k: c[k] for k in ("max_depth", "max_iterations", "max_tokens", "max_subcalls", "max_errors") if c.get(k)}
    for key in ("output_limit", "orchestrator", "user_prologue", "custom_system_prompt"):
        if c.get(key) is not None:
            options[key] = c[key]
    if c.get("compaction_threshold_pct"):
        options.update(compaction=True, compaction_threshold_pct=c["compaction_threshold_pct"])
    with RLM(
        engine=root,
        sub_engine=sub,
        depth=c.get("depth") or 0,
        max_concurrent_subcalls=1,
        implicit_batching=bool(c.get("implicit_batching", True)),
        scheduler_kwargs={"memo": False},  # every request reaches the recording, as it reached the model
        trajectory_path=trajectory,
        raise_on_limit=False,
        **options,
    ) as rlm:
        result = rlm.completion(context, rec.question)
    cells = [e for e in result.trajectory if e["event"] == "cell"]
    return Report(
        run_id=rec.run_id,
        recorded_answer=rec.final.get("answer") if rec.final else None,
        recorded_stop=rec.final.get("stopped_reason") if rec.final else None,
        answer=result.response,
        stopped_reason=result.stopped_reason,
        same_answer=rec.final is not None and rec.final.get("answer") == result.response,
        cells_recorded=len(rec.cells),
        cells_replayed=len(cells),
        first_difference=_difference(rec.cells, cells, root.missing + sub.missing),
    )


def _difference(recorded: list[dict[str, Any]], replayed: list[dict[str, Any]], missing: list[str]) -> str | None:
    """The first cell whose code, output, error or final answer changed; else a reply the run asked for and
    the recording lacks; else a different number of cells."""
    for i, (a, b) in enumerate(zip(recorded, replayed)):
        for key in ("code", "stdout", "error", "final"):
            if clip(a.get(key), CLIP) != clip(b.get(key), CLIP):
                return f"cell {i + 1} (depth {b.get('depth')}, turn {b.get('iteration')}): its {key} differs"
    if missing:
        return missing[0]
    if len(recorded) != len(replayed):
        return f"the recording ran {len(recorded)} cells, the replay {len(replayed)}"
    return None


def add_parser(sub: Any) -> None:
    p = sub.add_parser("replay", help="re-run a recorded run with its recorded model replies, through the sandbox")
    p.add_argument("trajectory", help="a trajectory file (--trajectory, trajectory_path=, the service's run logs)")
    p.add_argument("--context", "-c", required=True, help="the run's context again (checked against its sha256)")
    p.add_argument("--run-id", default=None, help="which run of the file (default: the last)")
    p.add_argument("--trajectory-out", default=None, help="write the replay's own events to this JSONL file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def command(args: argparse.Namespace, err: Any) -> int:
    """Prints the replayed answer (or the report as JSON); exit 0 when the answer is the recorded one."""
    report = replay(args.trajectory, args.context, args.run_id, args.trajectory_out)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.answer)
        same = "the same answer" if report.same_answer else f"a different answer (recorded: {report.recorded_answer!r})"
        err.print(
            f"replayed run {report.run_id}: {same}, stopped at {report.stopped_reason} (recorded: {report.recorded_stop}); "
            f"{report.cells_replayed} cells (recorded {report.cells_recorded})"
            + (f"; first difference: {report.first_difference}" if report.first_difference else "")
        )
    return 0 if report.same_answer else 1
