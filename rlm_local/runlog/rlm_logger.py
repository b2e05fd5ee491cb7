"""``RLMLogger``: the reference library's logger, with its meaning.

``RLMLogger()`` keeps each completion's trajectory in memory (``get_trajectory()``; ``completion()`` puts it
in ``result.metadata``); ``RLMLogger(log_dir=...)`` also appends it to a JSONL file in that directory, one
file per logger (a metadata line, then one line per iteration), as the reference does. The trajectory is
per completion: ``clear_iterations()`` starts the next one. rlm-local's own event trajectory (the viewer's
and ``rlm-local replay``'s input) is a different file: ``trajectory_path=``.

``IterationRecorder`` turns a run's typed events into the reference's iterations (records.py) and hands
each to the logger: one per root turn of the run's top depth, with the code blocks it ran and the
sub-calls each block made.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime
from typing import Any, Protocol

from .events import CellRan, Event, RootTurn, RunFinal, SubCall
from .records import CodeBlock, REPLResult, RLMIteration, RLMMetadata, RLMResult
from .usage import UsageSummary


class IterationLogger(Protocol):
    """What ``RLM(logger=...)`` needs of a reference-style logger (RLMLogger or a subclass of it)."""

    def log_metadata(self, metadata: RLMMetadata) -> None: ...
    def log(self, iteration: RLMIteration) -> None: ...
    def clear_iterations(self) -> None: ...
    def get_trajectory(self) -> dict[str, Any] | None: ...


class RLMLogger:
    """Captures run metadata and iterations of each completion; ``log_dir`` also writes them as JSONL."""

    def __init__(self, log_dir: str | None = None, file_name: str = "rlm") -> None:
        self.log_dir = log_dir
        self.log_file_path: str | None = None
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            self.log_file_path = os.path.join(log_dir, f"{file_name}_{stamp}_{uuid.uuid4().hex[:8]}.jsonl")
        self._run_metadata: dict[str, Any] | None = None
        self._iterations: list[dict[str, Any]] = []
        self._iteration_count = 0

    def log_metadata(self, metadata: RLMMetadata) -> None:
        if self._run_metadata is not None:  # once per logger, as in the reference
            return
        self._run_metadata = metadata.to_dict()
        self._write({"type": "metadata", "timestamp": datetime.now().isoformat(), **self._run_metadata})

    def log(self, iteration: RLMIteration) -> None:
        self._iteration_count += 1
        entry = {
            "type": "iteration",
            "iteration": self._iteration_count,
            "timestamp": datetime.now().isoformat(),
            **iteration.to_dict(),
        }
        self._iterations.append(entry)
        self._write(entry)

    def clear_iterations(self) -> None:
        self._iterations = []
        self._iteration_count = 0

    def get_trajectory(self) -> dict[str, Any] | None:
        if self._run_metadata is None:
            return None
        return {"run_metadata": self._run_metadata, "iterations": list(self._iterations)}

    @property
    def iteration_count(self) -> int:
        return self._iteration_count

    def _write(self, entry: dict[str, Any]) -> None:
        if self.log_file_path:
            with open(self.log_file_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")


def is_iteration_logger(obj: object) -> bool:
    return all(callable(getattr(obj, m, None)) for m in ("log_metadata", "log", "clear_iterations", "get_trajectory"))


class IterationRecorder:
    """An event listener building the reference's iterations of one completion at ``depth`` for ``logger``.
    Sub-calls arrive before the cell that made them ends, so they wait in ``_calls`` for its CellRan."""

    def __init__(self, logger: IterationLogger, depth: int, sub_model: str) -> None:
        self.logger, self.depth, self.sub_model = logger, depth, sub_model
        self._current: RLMIteration | None = None
        self._calls: list[RLMResult] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, RootTurn) and event.depth == self.depth and event.error is None:
            self._flush()
            self._current = RLMIteration(
                prompt={"prompt_tokens": event.prompt_tokens},
                response=event.reply,
                code_blocks=[],
                iteration_time=event.seconds,
            )
            if event.final_request:  # the closing request's reply is the answer (the reference's default answer)
                self._current.final_answer = event.reply
        elif isinstance(event, SubCall) and event.depth == self.depth + 1:
            usage = event.usage
            summary = UsageSummary(by_model={self.sub_model: usage}) if usage is not None else UsageSummary()
            self._calls.append(
                RLMResult(
                    root_model=self.sub_model,
                    prompt=event.prompt,
                    response=event.response,
                    usage_summary=summary,
                    execution_time=event.seconds,
                    error=event.error,
                    stopped_reason=event.stopped_reason or "final",
                )
            )
        elif isinstance(event, CellRan) and event.depth == self.depth and self._current is not None:
            result = REPLResult(
                stdout=event.stdout,
                stderr=event.error or "",
                locals={},
                execution_time=event.seconds,
                rlm_calls=self._calls,
                final_answer=event.final,
            )
            self._calls = []
            self._current.code_blocks.append(CodeBlock(code=event.code, result=result))
            if event.final is not None:
                self._current.final_answer = event.final
        elif isinstance(event, RunFinal):
            if self._current is not None and event.stopped_reason == "final":
                self._current.final_answer = event.answer
            self._flush()

    def _flush(self) -> None:
        if self._current is not None:
            self.logger.log(self._current)
            self._current = None
