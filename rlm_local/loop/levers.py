"""The loop's levers: what it does to get correct answers out of the model it is given. Each lever is
switched on or off on its own, so each is measured by ablation on the same items (bench/RESULTS.md). All are
off by default (the paper's plain loop); a model card turns on the ones measured to help that model (its
``[levers]`` table), and an explicit argument (``RLM(levers=...)``, ``--lever NAME=on|off``) beats the card.

- ``toolkit``: vetted REPL helpers (search, chunks, ask_each, count, vote, section_of: loop/toolkit.py) and a
  short worked example per task shape in the root prompt. Off: the paper's plain prompt.
- ``constrain``: root replies are constrained (a grammar, where the engine takes one) to one ```repl block or
  one FINAL line, so prose, runaways and format slips cannot happen.
- ``resample``: a reply whose code repeats the cell that just ran is never run again, nor answered by the
  same greedy request: it is re-sampled (temperature and seed), and if the model insists the earlier output
  is quoted back with a demand for something different.
- ``recover``: a run that ends on a budget returns the best candidate its cells printed or stored, never an
  empty answer when one exists (``RLMResult.answer_source`` says so).
- ``ground``: a final answer the model wrote out (not computed by its code) that appears in no observation
  of the run is questioned once; if the model insists it is taken and flagged (``answer_grounded``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ..errors import InputError

__all__ = ["Levers"]


@dataclass(frozen=True)
class Levers:
    toolkit: bool = False
    constrain: bool = False
    resample: bool = False
    recover: bool = False
    ground: bool = False

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> Levers:
        """These levers with ``overrides`` (name -> bool) applied; InputError names an unknown lever."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise InputError(f"unknown lever(s) {', '.join(unknown)}; the levers are: {', '.join(self.names())}")
        for name, value in overrides.items():
            if not isinstance(value, bool):
                raise InputError(f"lever {name!r} must be true or false, got {value!r}")
        return replace(self, **dict(overrides))

    @classmethod
    def resolve(cls, card_levers: Mapping[str, Any] | None, explicit: Levers | Mapping[str, Any] | None) -> Levers:
        """The defaults, then the card's ``[levers]`` table, then the caller's choice (a Levers is taken whole,
        a mapping overrides only the levers it names)."""
        if isinstance(explicit, Levers):
            return explicit
        return cls().with_overrides(card_levers).with_overrides(explicit)

    def to_dict(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in self.names()}


def parse_lever_flags(flags: list[str]) -> dict[str, bool]:
    """``["toolkit=off", "constrain=on"]`` (the CLI's ``--lever``) as a mapping; InputError for bad input."""
    out: dict[str, bool] = {}
    for flag in flags:
        name, sep, value = flag.partition("=")
        value = value.strip().lower()
        if not sep or value not in ("on", "off", "true", "false", "1", "0"):
            raise InputError(f"--lever {flag!r}: write NAME=on or NAME=off (levers: {', '.join(Levers.names())})")
        out[name.strip()] = value in ("on", "true", "1")
    Levers().with_overrides(out)  # names checked here
    return out
