"""What every run of one RLM shares (the models as the loop uses them, the loop's options) and what a run
ends with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import defaults
from ..engines import Engine
from ..models import find_card
from ..sandbox import Limits, SandboxPool
from ..scheduling.scheduler import Scheduler
from .formats import PromptFormat, format_named
from .hooks import Hooks
from .levers import Levers


@dataclass(frozen=True)
class Model:
    """An engine as the loop uses it, resolved once per RLM from its model card."""

    engine: Engine
    scheduler: Scheduler
    name: str
    format: PromptFormat  # chat or completion, from the card
    root_sampling: dict[str, Any]  # for root turns: the card's sampling
    sub_sampling: dict[str, Any]  # for sub-calls: greedy, an answer's length
    prompt_tokens: int  # the most prompt tokens a root conversation may use
    context_length: int


@dataclass(frozen=True)
class Settings:
    """What every run of one RLM shares: the models and the loop's options."""

    root: Model
    sub: Model
    max_depth: int
    output_limit: int
    sandbox_limits: Limits
    custom_system_prompt: str | None  # replaces our system prompt (instructions.py)
    implicit_batching: bool
    tools: dict[str, Any] = field(default_factory=dict)  # custom_tools: REPL names backed by the caller
    child_tools: dict[str, Any] | None = None  # custom_sub_tools: the tools of child runs (None: tools)
    tool_notes: dict[str, str] = field(default_factory=dict)  # descriptions given with the tools
    orchestrator: bool = False
    user_prologue: str | None = None
    compaction_threshold_pct: float | None = None  # None: no compaction (compaction.py)
    max_concurrent_subcalls: int = defaults.MAX_CONCURRENT_SUBCALLS
    hooks: Hooks = field(default_factory=Hooks)
    levers: Levers = field(default_factory=Levers)  # what the loop does for the model's answers (levers.py)
    sandbox_pool: SandboxPool | None = None  # pre-started sandbox workers for this RLM's runs (none: off)


@dataclass
class Outcome:
    answer: str
    stopped_reason: str
    iterations: int
    parsed: Any = None  # response_format: the validated answer
    invalid_answer: str | None = None  # response_format: the last answer that did not match
    error: str | None = None  # why it did not
    # "final" (the model gave it), "closing" (its reply to the closing request after a budget stop),
    # "recovered" (the best candidate the run's cells printed or stored: the recover lever) or "none"
    source: str = "final"
    grounded: bool | None = None  # False: an answer the model wrote out that the run never observed


def resolve_model(
    engine: Engine, scheduler: Any, sub_max_tokens: int | None, root_args: dict[str, Any], sub_args: dict[str, Any]
) -> Model:
    """An engine's model card, looked up once: prompt format, sampling of root turns and of sub-calls
    (greedy, the card's answer length unless ``sub_max_tokens``), and the root's prompt budget. Explicit
    arguments beat the card, the card beats defaults.py: ``root_args``/``sub_args`` are the reference's
    ``sampling_args``/``sub_sampling_args``."""
    card = find_card(engine.model_name) if engine.model_name else None
    root_sampling = (
        dict(card.sampling) if card else {"max_tokens": defaults.ROOT_MAX_TOKENS, "temperature": defaults.TEMPERATURE}
    )
    root_sampling.update(root_args)
    card_sub_tokens = card.sampling.get("max_tokens", defaults.CARD_SUB_MAX_TOKENS) if card else defaults.SUB_MAX_TOKENS
    sub_sampling = {"max_tokens": sub_max_tokens or card_sub_tokens, "temperature": defaults.TEMPERATURE, **sub_args}
    window = engine.context_length
    prompt_tokens = (
        card.max_prompt_tokens if card else max(defaults.MIN_PROMPT_TOKENS, window // 2 or defaults.CONTEXT_LENGTH)
    )
    if window:  # the engine's window (a llama.cpp slot) must hold the prompt and the reply
        room = (
            window - int(root_sampling.get("max_tokens", defaults.ROOT_MAX_TOKENS)) - defaults.TEMPLATE_OVERHEAD_TOKENS
        )
        prompt_tokens = max(256, min(prompt_tokens, room))
    return Model(
        engine=engine,
        scheduler=scheduler,
        name=engine.model_name,
        format=format_named(card.prompt_format if card else engine.prompt_format),
        root_sampling=root_sampling,
        sub_sampling=sub_sampling,
        prompt_tokens=prompt_tokens,
        context_length=window,
    )
