"""Usage accounting for one run, children included: calls and tokens per model, per depth, per role."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ..engines.base import Usage


@dataclass
class ModelUsageSummary:
    """One model's totals under the reference library's names."""

    total_calls: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "total_calls": self.total_calls,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
        }


@dataclass
class UsageSummary:
    """``result.usage_summary``: totals plus breakdowns. ``model_usage_summaries`` (objects with
    ``total_calls``, ``total_input_tokens``, ``total_output_tokens`` and ``to_dict()``) mirrors the reference
    library's field, and ``to_dict()`` has its ``model_usage_summaries`` key, so existing analysis code works."""

    total: Usage = field(default_factory=Usage)
    by_model: dict[str, Usage] = field(default_factory=dict)
    by_depth: dict[int, Usage] = field(default_factory=dict)
    by_role: dict[str, Usage] = field(default_factory=dict)  # "root" turns vs "sub" calls
    memo_hits: int = 0

    @property
    def model_usage_summaries(self) -> dict[str, ModelUsageSummary]:
        return {
            m: ModelUsageSummary(
                total_calls=u.calls, total_input_tokens=u.prompt_tokens, total_output_tokens=u.completion_tokens
            )
            for m, u in self.by_model.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_usage_summaries": {m: s.to_dict() for m, s in self.model_usage_summaries.items()},
            "total": self.total.to_dict(),
            "by_model": {m: u.to_dict() for m, u in self.by_model.items()},
            "by_depth": {str(d): u.to_dict() for d, u in sorted(self.by_depth.items())},
            "by_role": {r: u.to_dict() for r, u in self.by_role.items()},
            "memo_hits": self.memo_hits,
        }


class UsageTracker:
    """Thread-safe: child RLMs and batched sub-calls report into their run's tracker concurrently."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._summary = UsageSummary()

    def add(self, usage: Usage, model: str, depth: int, role: str) -> None:
        with self._lock:
            s = self._summary
            s.total = s.total + usage
            s.by_model[model] = s.by_model.get(model, Usage()) + usage
            s.by_depth[depth] = s.by_depth.get(depth, Usage()) + usage
            s.by_role[role] = s.by_role.get(role, Usage()) + usage

    def add_memo_hit(self) -> None:
        with self._lock:
            self._summary.memo_hits += 1

    @property
    def total_tokens(self) -> int:
        with self._lock:
            return self._summary.total.total_tokens

    def summary(self) -> UsageSummary:
        with self._lock:
            s = self._summary
            return UsageSummary(
                total=s.total + Usage(),
                by_model=dict(s.by_model),
                by_depth=dict(s.by_depth),
                by_role=dict(s.by_role),
                memo_hits=s.memo_hits,
            )
