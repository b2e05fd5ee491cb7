"""Usage accounting for one run, children included: calls and tokens per model, per depth, per role."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..engines.base import Usage


@dataclass
class ModelUsageSummary:
    """One model's totals under the reference library's names. ``total_cost`` is None for local models
    (they cost no dollars; the reference gives None too when a provider reports no cost)."""

    total_calls: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "total_calls": self.total_calls,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
        }
        if self.total_cost is not None:
            out["total_cost"] = self.total_cost
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelUsageSummary:
        return cls(
            total_calls=int(data.get("total_calls") or 0),
            total_input_tokens=int(data.get("total_input_tokens") or 0),
            total_output_tokens=int(data.get("total_output_tokens") or 0),
            total_cost=data.get("total_cost"),
        )


class UsageSummary:
    """``result.usage_summary``: the reference library's type (``UsageSummary(model_usage_summaries={...})``,
    ``total_input_tokens``, ``total_output_tokens``, ``total_cost``, ``to_dict``/``from_dict``) plus our
    breakdowns: ``total`` (a Usage), ``by_model``, ``by_depth``, ``by_role`` ("root" turns, "sub" calls)
    and ``memo_hits``. ``to_dict()`` has the reference's ``model_usage_summaries`` key first."""

    def __init__(
        self,
        model_usage_summaries: dict[str, ModelUsageSummary] | None = None,
        *,
        total: Usage | None = None,
        by_model: dict[str, Usage] | None = None,
        by_depth: dict[int, Usage] | None = None,
        by_role: dict[str, Usage] | None = None,
        memo_hits: int = 0,
    ) -> None:
        self.by_model = dict(by_model or {})
        self._costs: dict[str, float | None] = {}
        for name, s in (model_usage_summaries or {}).items():  # the reference's way to build one
            self.by_model[name] = Usage(
                calls=s.total_calls, prompt_tokens=s.total_input_tokens, completion_tokens=s.total_output_tokens
            )
            self._costs[name] = s.total_cost
        self.total = total if total is not None else sum(self.by_model.values(), Usage())
        self.by_depth = dict(by_depth or {})
        self.by_role = dict(by_role or {})
        self.memo_hits = memo_hits

    @property
    def model_usage_summaries(self) -> dict[str, ModelUsageSummary]:
        return {
            m: ModelUsageSummary(
                total_calls=u.calls,
                total_input_tokens=u.prompt_tokens,
                total_output_tokens=u.completion_tokens,
                total_cost=self._costs.get(m),
            )
            for m, u in self.by_model.items()
        }

    @property
    def total_input_tokens(self) -> int:
        return self.total.prompt_tokens

    @property
    def total_output_tokens(self) -> int:
        return self.total.completion_tokens

    @property
    def total_cost(self) -> float | None:
        """Dollars across models: None for local models (no cost data), as the reference gives it then."""
        costs = [c for c in self._costs.values() if c is not None]
        return sum(costs) if costs else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UsageSummary) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"UsageSummary(model_usage_summaries={self.model_usage_summaries!r})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model_usage_summaries": {m: s.to_dict() for m, s in self.model_usage_summaries.items()},
            "total": self.total.to_dict(),
            "by_model": {m: u.to_dict() for m, u in self.by_model.items()},
            "by_depth": {str(d): u.to_dict() for d, u in sorted(self.by_depth.items())},
            "by_role": {r: u.to_dict() for r, u in self.by_role.items()},
            "memo_hits": self.memo_hits,
        }
        if self.total_cost is not None:
            out["total_cost"] = self.total_cost
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageSummary:
        """From ``to_dict()`` (ours, with its breakdowns) or the reference's (``model_usage_summaries`` only)."""
        summaries = {m: ModelUsageSummary.from_dict(d) for m, d in (data.get("model_usage_summaries") or {}).items()}
        if "by_model" not in data:
            return cls(summaries)
        out = cls(
            total=_usage(data.get("total")),
            by_model={m: _usage(d) for m, d in data["by_model"].items()},
            by_depth={int(d): _usage(u) for d, u in (data.get("by_depth") or {}).items()},
            by_role={r: _usage(u) for r, u in (data.get("by_role") or {}).items()},
            memo_hits=int(data.get("memo_hits") or 0),
        )
        out._costs = {m: s.total_cost for m, s in summaries.items()}
        return out


def _usage(data: dict[str, Any] | None) -> Usage:
    data = data or {}
    return Usage(
        calls=int(data.get("calls") or 0),
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        cached_tokens=data.get("cached_tokens"),
        completion_tokens=int(data.get("completion_tokens") or 0),
        seconds=float(data.get("seconds") or 0.0),
    )


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
